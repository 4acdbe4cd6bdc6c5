"""Reward shaping and advantage estimators for RL on language models (pure, jit-able).

Per-token arrays are aligned to response tokens with `mask_BL` = 1 on one contiguous response
span per row (prompt before it and padding after it are 0). Sequence-level rewards for
RLOO / GRPO are laid out in consecutive groups: rows [g*k, (g+1)*k) answer the same prompt.
"""

from __future__ import annotations

from typing import Literal

import chex
import jax
import jax.numpy as jnp

from alignjax.logprobs import Array, as_float, masked_count, masked_mean


def kl_penalty(
    logps_BL: Array,
    ref_logps_BL: Array,
    mask_BL: Array,
    *,
    estimator: Literal["k1", "k2", "k3"] = "k1",
    clamp: float | None = None,
) -> Array:
    """Per-token estimate of KL(pi || pi_ref) from sampled tokens, zero off the mask.

    With l_t = log pi(a_t) - log pi_ref(a_t):  k1 = l,  k2 = l^2 / 2,  k3 = exp(-l) - 1 + l.
    Schulman (2020), "Approximating KL Divergence" (k3 is unbiased and >= 0); as TRL and
    OpenRLHF `compute_approx_kl`. `clamp` bounds the result to [-clamp, clamp] (OpenRLHF: 10).

    Args:
      logps_BL: log-probs of the sampled tokens under the policy (or the rollout policy).
      ref_logps_BL: the same under the reference model.
      mask_BL: 1 on response tokens.
      estimator: "k1", "k2" or "k3".
      clamp: optional bound on the per-token value.

    Returns:
      kl_BL.
    """
    chex.assert_rank(logps_BL, 2)
    chex.assert_equal_shape([logps_BL, ref_logps_BL, mask_BL])
    valid_BL = mask_BL != 0
    log_ratio_BL = jnp.where(valid_BL, as_float(logps_BL) - as_float(ref_logps_BL), 0.0)
    if estimator == "k1":
        kl_BL = log_ratio_BL
    elif estimator == "k2":
        kl_BL = 0.5 * log_ratio_BL**2
    elif estimator == "k3":
        kl_BL = jnp.expm1(-log_ratio_BL) + log_ratio_BL
    else:
        raise ValueError(f"kl_penalty: estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")
    if clamp is not None:
        kl_BL = jnp.clip(kl_BL, -clamp, clamp)
    return jnp.where(valid_BL, kl_BL, 0.0)


def _last_token_mask(mask_BL: Array) -> Array:
    """One-hot (float) of the last position where `mask_BL` is 1; all zeros for an empty row."""
    chex.assert_rank(mask_BL, 2)
    positions_L = jnp.arange(mask_BL.shape[1])
    last_B = jnp.max(jnp.where(mask_BL != 0, positions_L[None, :], -1), axis=-1)
    return as_float(positions_L[None, :] == last_B[:, None])


def shaped_rewards(
    scores_B: Array, kl_BL: Array, mask_BL: Array, *, kl_coef: float | Array
) -> Array:
    """Per-token RLHF reward: r_t = -kl_coef * KL_t, plus the sequence score on the last token.

    Ziegler et al. (2019), "Fine-Tuning Language Models from Human Preferences", Sec. 2.2
    (R = r - beta KL, here per token); the score lands on the last response token (OpenRLHF,
    safe-rlhf, DeepSpeed-Chat; TRL HEAD places it one position later, see the reference notes).

    Args:
      scores_B: reward-model score of each response.
      kl_BL: per-token KL from `kl_penalty`.
      mask_BL: 1 on response tokens.
      kl_coef: beta.

    Returns:
      rewards_BL, zero off the mask.
    """
    chex.assert_rank(scores_B, 1)
    chex.assert_equal_shape([kl_BL, mask_BL])
    chex.assert_equal_shape_prefix([kl_BL, scores_B], 1)
    score_BL = as_float(scores_B)[:, None] * _last_token_mask(mask_BL)
    rewards_BL = score_BL - kl_coef * as_float(kl_BL)
    return jnp.where(mask_BL != 0, rewards_BL, 0.0)


def gae(
    rewards_BL: Array,
    values_BL: Array,
    mask_BL: Array,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Array, Array]:
    """Generalised advantage estimation over masked, variable-length responses.

      delta_t = r_t + gamma V_{t+1} - V_t,   A_t = delta_t + gamma lam A_{t+1},   R_t = A_t + V_t

    Schulman et al. (2016), "High-Dimensional Continuous Control Using Generalized Advantage
    Estimation", Eq. 16. Rewards and values off the mask are zeroed first, so V past the last
    response token is 0 (TRL, OpenRLHF, safe-rlhf, DeepSpeed-Chat). Runs as a reverse
    `jax.lax.scan` over L: static shapes, no per-row lengths.

    Args:
      rewards_BL: per-token rewards (e.g. `shaped_rewards`).
      values_BL: V_t from the rollout critic (no gradient flows through the result).
      mask_BL: 1 on the response tokens (one contiguous span per row).
      gamma: discount.
      lam: GAE lambda.

    Returns:
      (advantages_BL, returns_BL), both zero off the mask.
    """
    chex.assert_rank(rewards_BL, 2)
    chex.assert_equal_shape([rewards_BL, values_BL, mask_BL])
    mask_BL = as_float(mask_BL)
    rewards_BL = jax.lax.stop_gradient(jnp.where(mask_BL != 0, as_float(rewards_BL), 0.0))
    values_BL = jax.lax.stop_gradient(jnp.where(mask_BL != 0, as_float(values_BL), 0.0))
    next_values_BL = jnp.pad(values_BL[:, 1:], ((0, 0), (0, 1)))
    deltas_BL = rewards_BL + gamma * next_values_BL - values_BL

    def step(next_advantage_B: Array, delta_B: Array) -> tuple[Array, Array]:
        advantage_B = delta_B + gamma * lam * next_advantage_B
        return advantage_B, advantage_B

    _, advantages_LB = jax.lax.scan(
        step, jnp.zeros_like(deltas_BL[:, 0]), deltas_BL.T, reverse=True
    )
    advantages_BL = advantages_LB.T * mask_BL
    return advantages_BL, (advantages_BL + values_BL) * mask_BL


def masked_whiten(
    x_BL: Array,
    mask_BL: Array,
    *,
    shift_mean: bool = True,
    unbiased: bool = True,
    eps: float = 1e-8,
) -> Array:
    """Whitens x over the masked entries: (x - mu) / sqrt(var + eps), zero off the mask.

    As TRL's `masked_whiten` (unbiased variance, Bessel n / (n - 1)); `unbiased=False` gives the
    biased variance (OpenRLHF). `shift_mean=False` adds mu back (reward whitening). With fewer
    than two unmasked entries the Bessel factor falls back to 1, so the result stays finite.

    Args:
      x_BL: values to whiten (advantages or rewards).
      mask_BL: 1 where x counts.
      shift_mean: subtract the mean (True) or only rescale (False).
      unbiased: use the unbiased variance.
      eps: added to the variance.

    Returns:
      whitened_BL.
    """
    chex.assert_equal_shape([x_BL, mask_BL])
    x_BL = as_float(x_BL)
    count = masked_count(mask_BL)
    mean = masked_mean(x_BL, mask_BL)
    var = masked_mean((x_BL - mean) ** 2, mask_BL)
    if unbiased:
        var = var * count / jnp.maximum(count - 1.0, 1.0)
    whitened_BL = (x_BL - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        whitened_BL = whitened_BL + mean
    return jnp.where(mask_BL != 0, whitened_BL, 0.0)


def _groups(rewards_B: Array, group_size: int) -> Array:
    chex.assert_rank(rewards_B, 1)
    if group_size < 2 or rewards_B.shape[0] % group_size:
        raise ValueError(
            f"group_size must be >= 2 and divide the batch ({rewards_B.shape[0]}), got {group_size}"
        )
    return as_float(rewards_B).reshape(-1, group_size)


def rloo_advantages(rewards_B: Array, *, group_size: int) -> Array:
    """REINFORCE leave-one-out advantages: A_i = r_i - mean_{j != i} r_j within each group.

    Kool, van Hoof & Welling (2019), "Buy 4 REINFORCE Samples, Get a Baseline for Free!";
    Ahmadian et al. (2024), "Back to Basics: Revisiting REINFORCE Style Optimization for
    Learning from Human Feedback in LLMs", Sec. 3.3 (RLOO estimator). As TRL's RLOO trainer.

    Args:
      rewards_B: sequence rewards, consecutive groups of `group_size` samples per prompt.
      group_size: k >= 2.

    Returns:
      advantages_B.
    """
    grouped_GK = _groups(rewards_B, group_size)
    baseline_GK = (jnp.sum(grouped_GK, axis=-1, keepdims=True) - grouped_GK) / (group_size - 1)
    return (grouped_GK - baseline_GK).reshape(-1)


def grpo_advantages(
    rewards_B: Array, *, group_size: int, scale: bool = True, eps: float = 1e-4
) -> Array:
    """Group-relative advantages: A_i = (r_i - mean_g r) / (std_g r + eps).

    Shao et al. (2024), "DeepSeekMath", Sec. 4.1.2 (outcome supervision); as TRL's GRPO trainer
    (unbiased std, eps 1e-4, `scale_rewards="group"`; `scale=False` is Dr. GRPO's centring only).

    Args:
      rewards_B: sequence rewards, consecutive groups of `group_size` samples per prompt.
      group_size: k >= 2.
      scale: divide by the group's standard deviation.
      eps: added to the standard deviation.

    Returns:
      advantages_B.
    """
    grouped_GK = _groups(rewards_B, group_size)
    centred_GK = grouped_GK - jnp.mean(grouped_GK, axis=-1, keepdims=True)
    if scale:
        std_G1 = jnp.std(grouped_GK, axis=-1, keepdims=True, ddof=1)
        centred_GK = centred_GK / (std_G1 + eps)
    return centred_GK.reshape(-1)


def adaptive_kl_update(
    kl_coef: Array | float,
    observed_kl: Array | float,
    *,
    target: float,
    horizon: float,
    n_steps: int,
) -> Array:
    """One update of the adaptive KL controller, as a pure function.

      e = clip(KL_obs / KL_target - 1, -0.2, 0.2),   beta <- beta (1 + e * n_steps / horizon)

    Ziegler et al. (2019), "Fine-Tuning Language Models from Human Preferences", Sec. 2.2; as TRL
    <= 0.11 `AdaptiveKLController` and OpenRLHF (`n_steps` = samples in the batch).

    Args:
      kl_coef: current beta.
      observed_kl: measured KL(pi || pi_ref) of the last batch.
      target: KL_target.
      horizon: K_beta's horizon (TRL default 10000).
      n_steps: samples (or steps) since the last update.

    Returns:
      the new beta.
    """
    error = jnp.clip(as_float(jnp.asarray(observed_kl)) / target - 1.0, -0.2, 0.2)
    return as_float(jnp.asarray(kl_coef)) * (1.0 + error * n_steps / horizon)
