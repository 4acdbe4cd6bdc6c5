"""Policy-gradient losses on per-token log-probs: PPO-clip, the clipped value loss, REINFORCE.

Arrays are aligned to response tokens: `logps_BL[:, t]` is log pi(a_t) of token t (see
`alignjax.logprobs`), `mask_BL` is 1 on the response (action) tokens. Advantages, returns and
old log-probs come from the rollout and are treated as constants (no gradient flows into them).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from alignjax.logprobs import Array, as_float, masked_count, masked_sum
from alignjax.losses.advantages import kl_penalty
from alignjax.losses.common import Metrics, masked_mean_metric, normalize, sum_metric


def _reduce_tokens(
    loss_BL: Array, mask_BL: Array, *, sequence_mean: bool, normalizer: float | Array | None
) -> Array:
    """Token mean over the batch, or mean over sequences of each sequence's token mean."""
    if sequence_mean:
        per_sequence_B = masked_sum(loss_BL, mask_BL, axis=-1) / jnp.maximum(
            masked_count(mask_BL, axis=-1), 1.0
        )
        count = jnp.asarray(loss_BL.shape[0], per_sequence_B.dtype)
        return normalize(jnp.sum(per_sequence_B), count, normalizer)
    return normalize(masked_sum(loss_BL, mask_BL), masked_count(mask_BL), normalizer)


def ppo_policy_loss(
    logps_BL: Array,
    old_logps_BL: Array,
    advantages_BL: Array,
    mask_BL: Array,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    sequence_mean: bool = False,
    normalizer: float | Array | None = None,
) -> tuple[Array, Metrics]:
    """PPO clipped surrogate objective, per token, with optional asymmetric and dual clipping.

    With ratio rho_t = exp(log pi_theta(a_t) - log pi_old(a_t)) and advantage A_t:

      l_t = max(-A_t rho_t, -A_t clip(rho_t, 1 - eps_low, 1 + eps_high))
      dual clip (c > 1), where A_t < 0:  l_t = min(l_t, -c A_t)

    Schulman et al. (2017), "Proximal Policy Optimization Algorithms", Eq. 7 (L^CLIP, negated);
    dual clip: Ye et al. (2020), "Mastering Complex Control in MOBA Games with Deep Reinforcement
    Learning" (arXiv:1912.09729), Sec. 3; asymmetric eps_high: DAPO's clip-higher (Yu et al.,
    2025). As TRL, OpenRLHF `PolicyLoss`, safe-rlhf and DeepSpeed-Chat.

    Args:
      logps_BL: log pi_theta of the sampled tokens (differentiated).
      old_logps_BL: log pi_old from the rollout.
      advantages_BL: A_t (e.g. whitened GAE).
      mask_BL: 1 on response tokens.
      clip_eps: eps_low (and eps_high unless `clip_eps_high` is given).
      clip_eps_high: eps_high for an asymmetric clip.
      dual_clip: c > 1 for dual-clip PPO; None disables it.
      sequence_mean: mean over sequences of per-sequence token means (safe-rlhf, GRPO's "grpo")
        instead of the token mean over the batch (TRL, DeepSpeed-Chat).
      normalizer: global denominator (tokens, or sequences with `sequence_mean`) over the
        accumulated batch; e.g. B * max_len gives Dr. GRPO's reduction.

    Returns:
      (loss, metrics): `ppo/policy_loss`, `ppo/clipfrac` (fraction of tokens where the clipped
      term is the active one), `ppo/approx_kl` (k3 estimate of KL(pi_old || pi_theta),
      mean[(rho - 1) - log rho]) and `ppo/ratio`, each with `/sum` and `/count`.
    """
    chex.assert_rank(logps_BL, 2)
    chex.assert_equal_shape([logps_BL, old_logps_BL, advantages_BL, mask_BL])
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    valid_BL = mask_BL != 0
    # Zero the log-ratio on padding so exp() cannot overflow there.
    log_ratio_BL = jnp.where(valid_BL, as_float(logps_BL) - as_float(old_logps_BL), 0.0)
    ratio_BL = jnp.exp(log_ratio_BL)
    adv_BL = jax.lax.stop_gradient(as_float(advantages_BL))
    unclipped_BL = -adv_BL * ratio_BL
    clipped_BL = -adv_BL * jnp.clip(ratio_BL, 1.0 - clip_eps, 1.0 + eps_high)
    loss_BL = jnp.maximum(unclipped_BL, clipped_BL)
    if dual_clip is not None:
        loss_BL = jnp.where(adv_BL < 0, jnp.minimum(loss_BL, -dual_clip * adv_BL), loss_BL)
    loss = _reduce_tokens(loss_BL, mask_BL, sequence_mean=sequence_mean, normalizer=normalizer)
    ratio_sg_BL = jax.lax.stop_gradient(ratio_BL)
    log_ratio_sg_BL = jax.lax.stop_gradient(log_ratio_BL)
    metrics = {
        **masked_mean_metric("ppo/policy_loss", jax.lax.stop_gradient(loss_BL), mask_BL),
        **masked_mean_metric("ppo/clipfrac", (clipped_BL > unclipped_BL), mask_BL),
        **masked_mean_metric("ppo/approx_kl", (ratio_sg_BL - 1.0) - log_ratio_sg_BL, mask_BL),
        **masked_mean_metric("ppo/ratio", ratio_sg_BL, mask_BL),
    }
    return loss, metrics


def value_loss(
    values_BL: Array,
    old_values_BL: Array,
    returns_BL: Array,
    mask_BL: Array,
    *,
    clip_eps: float | None = 0.2,
    normalizer: float | Array | None = None,
) -> tuple[Array, Metrics]:
    """Clipped value-function loss of PPO as implemented for RLHF.

      V_clip = V_old + clip(V - V_old, -eps_v, eps_v)
      L = 1/2 * mean_M max((V - R)^2, (V_clip - R)^2)

    Not in the PPO paper; from OpenAI baselines' PPO2, as TRL (eps_v = 0.2), OpenRLHF
    `ValueLoss` (0.5), safe-rlhf (5.0) and DeepSpeed-Chat (0.2). `clip_eps=None` gives the plain
    1/2 (V - R)^2.

    Args:
      values_BL: V_t of the critic being trained (differentiated).
      old_values_BL: V_old,t from the rollout.
      returns_BL: R_t (e.g. GAE advantages + old values).
      mask_BL: 1 on response tokens.
      clip_eps: eps_v, or None for no clipping.
      normalizer: global token count over the accumulated batch.

    Returns:
      (loss, metrics): `ppo/value_loss` and `ppo/value_clipfrac`, each with `/sum` and `/count`.
    """
    chex.assert_rank(values_BL, 2)
    chex.assert_equal_shape([values_BL, old_values_BL, returns_BL, mask_BL])
    values_BL = as_float(values_BL)
    old_BL = jax.lax.stop_gradient(as_float(old_values_BL))
    returns_BL = jax.lax.stop_gradient(as_float(returns_BL))
    unclipped_BL = (values_BL - returns_BL) ** 2
    if clip_eps is None:
        loss_BL = unclipped_BL
        clipfrac_BL = jnp.zeros_like(unclipped_BL)
    else:
        clipped_values_BL = old_BL + jnp.clip(values_BL - old_BL, -clip_eps, clip_eps)
        clipped_BL = (clipped_values_BL - returns_BL) ** 2
        loss_BL = jnp.maximum(unclipped_BL, clipped_BL)
        clipfrac_BL = clipped_BL > unclipped_BL
    loss = 0.5 * normalize(masked_sum(loss_BL, mask_BL), masked_count(mask_BL), normalizer)
    metrics = {
        **masked_mean_metric("ppo/value_loss", 0.5 * jax.lax.stop_gradient(loss_BL), mask_BL),
        **masked_mean_metric("ppo/value_clipfrac", clipfrac_BL, mask_BL),
    }
    return loss, metrics


def reinforce_loss(
    logps_BL: Array,
    mask_BL: Array,
    returns_B: Array,
    baseline_B: Array | None = None,
    *,
    normalizer: float | Array | None = None,
) -> tuple[Array, Metrics]:
    """REINFORCE with a baseline, at the sequence level.

      L = - (1/B) sum_b (R_b - b_b) * sum_t m_bt log pi_theta(y_bt)

    Williams (1992), "Simple Statistical Gradient-Following Algorithms for Connectionist
    Reinforcement Learning", Sec. 4 (REINFORCE with reinforcement baseline b). The baseline may
    be a running mean, a value estimate or the leave-one-out mean (then R - b is
    `rloo_advantages`); R - b carries no gradient.

    Args:
      logps_BL: log pi_theta of the sampled tokens.
      mask_BL: 1 on response tokens.
      returns_B: sequence return R (e.g. score - beta * KL).
      baseline_B: b; None means 0.
      normalizer: number of sequences over the accumulated batch (default B).

    Returns:
      (loss, metrics): `reinforce/loss`, `reinforce/advantage` (mean R - b), `reinforce/return`.
    """
    chex.assert_rank(logps_BL, 2)
    chex.assert_equal_shape([logps_BL, mask_BL])
    chex.assert_rank(returns_B, 1)
    chex.assert_equal_shape_prefix([logps_BL, returns_B], 1)
    returns_B = jax.lax.stop_gradient(as_float(returns_B))
    if baseline_B is None:
        advantages_B = returns_B
    else:
        chex.assert_equal_shape([returns_B, baseline_B])
        advantages_B = returns_B - jax.lax.stop_gradient(as_float(baseline_B))
    sequence_logps_B = masked_sum(logps_BL, mask_BL, axis=-1)
    count = jnp.asarray(logps_BL.shape[0], sequence_logps_B.dtype)
    total = -jnp.sum(advantages_B * sequence_logps_B)
    loss = normalize(total, count, normalizer)
    return loss, {
        **sum_metric("reinforce/loss", total, count),
        "reinforce/advantage": jnp.mean(advantages_B),
        "reinforce/return": jnp.mean(returns_B),
    }


def kl_loss(
    logps_BL: Array,
    ref_logps_BL: Array,
    mask_BL: Array,
    *,
    estimator: str = "k3",
    sequence_mean: bool = False,
    normalizer: float | Array | None = None,
) -> tuple[Array, Metrics]:
    """The KL penalty as a loss term (GRPO-style), reduced like the policy loss it joins.

      L_KL = reduce_t k(log pi_theta(a_t) - log pi_ref(a_t))

    Shao et al. (2024), "DeepSeekMath", Eq. 4 (k3 per token, added to the per-token objective
    with weight beta); as TRL's GRPO trainer (`beta * per_token_kl`). The reductions are linear,
    so `ppo_policy_loss(...) + beta * kl_loss(...)` with the same `sequence_mean` and
    `normalizer` equals reducing the summed per-token loss, as TRL does. Unlike a KL placed in
    the reward, this term is differentiated: k1 gives the gradient of E[log pi - log pi_ref]
    through log pi of the sampled tokens, which is zero in expectation; on on-policy samples k2's
    expected gradient is that of KL(pi || pi_ref) and k3's that of KL(pi_ref || pi).

    Args:
      logps_BL: log pi_theta of the sampled tokens (differentiated).
      ref_logps_BL: log pi_ref of the same tokens (constant).
      mask_BL: 1 on response tokens.
      estimator: "k1", "k2" or "k3" (`kl_penalty`).
      sequence_mean: mean over sequences of per-sequence token means.
      normalizer: global denominator over the accumulated batch (as `ppo_policy_loss`).

    Returns:
      (loss, metrics): `kl/loss_term` (the token mean of the estimate), with `/sum`, `/count`.
    """
    chex.assert_equal_shape([logps_BL, ref_logps_BL, mask_BL])
    kl_BL = kl_penalty(logps_BL, jax.lax.stop_gradient(ref_logps_BL), mask_BL,
                       estimator=estimator)
    loss = _reduce_tokens(kl_BL, mask_BL, sequence_mean=sequence_mean, normalizer=normalizer)
    return loss, masked_mean_metric("kl/loss_term", jax.lax.stop_gradient(kl_BL), mask_BL)
