"""Pairwise preference losses on sequence log-probs: the DPO family, SimPO and ORPO.

Notation (as in shared/reference/losses.md): S(y) = sum of the completion's token log-probs,
A(y) = S(y) / |y|, rho(y) = S_theta(y) - S_ref(y), Delta = rho(y_w) - rho(y_l). The losses take
per-sequence log-probs (`alignjax.logprobs.sequence_logprobs`), never a model. Every loss is the
mean over the batch of pairs. The DPO-family metrics use the implicit reward beta * rho(y).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from alignjax.logprobs import Array, as_float
from alignjax.losses.common import Metrics


def _check_pairs(*logps_B: Array) -> tuple[Array, ...]:
    chex.assert_rank(list(logps_B), 1)
    chex.assert_equal_shape(list(logps_B))
    return tuple(as_float(x) for x in logps_B)


def _pair_metrics(prefix: str, loss: Array, chosen_B: Array, rejected_B: Array) -> Metrics:
    """Loss, reward accuracy mean[r_w > r_l], margin and mean rewards; rewards are detached."""
    chosen_B = jax.lax.stop_gradient(chosen_B)
    rejected_B = jax.lax.stop_gradient(rejected_B)
    return {
        f"{prefix}/loss": loss,
        f"{prefix}/accuracy": jnp.mean((chosen_B > rejected_B).astype(chosen_B.dtype)),
        f"{prefix}/margin": jnp.mean(chosen_B - rejected_B),
        f"{prefix}/chosen_reward": jnp.mean(chosen_B),
        f"{prefix}/rejected_reward": jnp.mean(rejected_B),
    }


def _log_ratios(
    policy_chosen_logps_B: Array,
    policy_rejected_logps_B: Array,
    ref_chosen_logps_B: Array,
    ref_rejected_logps_B: Array,
) -> tuple[Array, Array]:
    pc, pr, rc, rr = _check_pairs(
        policy_chosen_logps_B, policy_rejected_logps_B, ref_chosen_logps_B, ref_rejected_logps_B
    )
    return pc - rc, pr - rr


def _smoothed_logistic(logits_B: Array, label_smoothing: float | Array) -> Array:
    """-(1 - eps) log sigma(z) - eps log sigma(-z), per pair."""
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits_B) - (
        label_smoothing * jax.nn.log_sigmoid(-logits_B)
    )


def dpo_loss(
    policy_chosen_logps_B: Array,
    policy_rejected_logps_B: Array,
    ref_chosen_logps_B: Array,
    ref_rejected_logps_B: Array,
    *,
    beta: float | Array,
    label_smoothing: float | Array = 0.0,
) -> tuple[Array, Metrics]:
    """Direct Preference Optimization, with conservative label smoothing (cDPO).

      L = - (1 - eps) log sigma(beta Delta) - eps log sigma(-beta Delta)

    Rafailov et al. (2023), "Direct Preference Optimization", Eq. 7 (eps = 0); cDPO: Mitchell
    (2023), "A note on DPO with noisy preferences & relationship to IPO". Same as the DPO
    reference code, OpenRLHF, DeepSpeed-Chat and TRL <= 0.28 (TRL >= 0.29 ignores eps here).

    Args:
      policy_chosen_logps_B: S_theta(y_w), summed completion log-probs under the policy.
      policy_rejected_logps_B: S_theta(y_l).
      ref_chosen_logps_B: S_ref(y_w) under the frozen reference model.
      ref_rejected_logps_B: S_ref(y_l).
      beta: inverse temperature of the implicit reward beta * rho.
      label_smoothing: eps in [0, 0.5], the assumed probability that a label is flipped.

    Returns:
      (loss, metrics): `dpo/loss`, `dpo/accuracy`, `dpo/margin`, `dpo/chosen_reward`,
      `dpo/rejected_reward` (rewards beta * rho).
    """
    chosen_B, rejected_B = _log_ratios(
        policy_chosen_logps_B, policy_rejected_logps_B, ref_chosen_logps_B, ref_rejected_logps_B
    )
    loss = jnp.mean(_smoothed_logistic(beta * (chosen_B - rejected_B), label_smoothing))
    return loss, _pair_metrics("dpo", loss, beta * chosen_B, beta * rejected_B)


def robust_dpo_loss(
    policy_chosen_logps_B: Array,
    policy_rejected_logps_B: Array,
    ref_chosen_logps_B: Array,
    ref_rejected_logps_B: Array,
    *,
    beta: float | Array,
    label_smoothing: float | Array,
) -> tuple[Array, Metrics]:
    """Robust DPO: the unbiased DPO loss under labels flipped with probability eps.

      L = [ -(1 - eps) log sigma(beta Delta) + eps log sigma(-beta Delta) ] / (1 - 2 eps)

    Chowdhury, Kini & Natarajan (2024), "Provably Robust DPO: Aligning Language Models with Noisy
    Feedback" (arXiv:2403.00409), Sec. 3, the de-biased loss; as TRL's `loss_type="robust"`.

    Args:
      policy_chosen_logps_B, policy_rejected_logps_B, ref_chosen_logps_B, ref_rejected_logps_B:
        summed completion log-probs as in `dpo_loss`.
      beta: inverse temperature.
      label_smoothing: the flip rate eps, in [0, 0.5).

    Returns:
      (loss, metrics) with the `dpo/*` names of `dpo_loss`.
    """
    if isinstance(label_smoothing, float | int) and not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust_dpo_loss needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    chosen_B, rejected_B = _log_ratios(
        policy_chosen_logps_B, policy_rejected_logps_B, ref_chosen_logps_B, ref_rejected_logps_B
    )
    logits_B = beta * (chosen_B - rejected_B)
    per_pair_B = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits_B) + (
        label_smoothing * jax.nn.log_sigmoid(-logits_B)
    )
    loss = jnp.mean(per_pair_B) / (1.0 - 2.0 * label_smoothing)
    return loss, _pair_metrics("dpo", loss, beta * chosen_B, beta * rejected_B)


def ipo_loss(
    policy_chosen_logps_B: Array,
    policy_rejected_logps_B: Array,
    ref_chosen_logps_B: Array,
    ref_rejected_logps_B: Array,
    *,
    beta: float | Array,
    chosen_lengths_B: Array | None = None,
    rejected_lengths_B: Array | None = None,
) -> tuple[Array, Metrics]:
    """Identity Preference Optimization: squared regression of the margin onto 1 / (2 beta).

      summed (default; DPO reference code, OpenRLHF):   L = (Delta - 1/(2 beta))^2
      length-normalised (TRL, pass both lengths):       L = (Delta_bar - 1/(2 beta))^2,
        Delta_bar = rho(y_w) / max(|y_w|, 1) - rho(y_l) / max(|y_l|, 1)

    Azar et al. (2023), "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", Eq. 17 (beta is their tau). TRL normalises each log-ratio by its completion
    length (confirmed with the IPO authors); the two forms differ by design.

    Args:
      policy_chosen_logps_B, policy_rejected_logps_B, ref_chosen_logps_B, ref_rejected_logps_B:
        summed completion log-probs as in `dpo_loss`.
      beta: the regularisation tau; the margin target is 1 / (2 beta).
      chosen_lengths_B: |y_w| (completion tokens); with `rejected_lengths_B` selects TRL's form.
      rejected_lengths_B: |y_l|.

    Returns:
      (loss, metrics) with the `dpo/*` names (rewards beta * rho, unnormalised).
    """
    if (chosen_lengths_B is None) != (rejected_lengths_B is None):
        raise ValueError("ipo_loss: pass both chosen_lengths_B and rejected_lengths_B, or neither")
    chosen_B, rejected_B = _log_ratios(
        policy_chosen_logps_B, policy_rejected_logps_B, ref_chosen_logps_B, ref_rejected_logps_B
    )
    if chosen_lengths_B is None:
        delta_B = chosen_B - rejected_B
    else:
        chex.assert_equal_shape([chosen_B, chosen_lengths_B, rejected_lengths_B])
        delta_B = chosen_B / jnp.maximum(as_float(chosen_lengths_B), 1.0) - rejected_B / (
            jnp.maximum(as_float(rejected_lengths_B), 1.0)
        )
    loss = jnp.mean((delta_B - 1.0 / (2.0 * beta)) ** 2)
    return loss, _pair_metrics("dpo", loss, beta * chosen_B, beta * rejected_B)


def hinge_loss(
    policy_chosen_logps_B: Array,
    policy_rejected_logps_B: Array,
    ref_chosen_logps_B: Array,
    ref_rejected_logps_B: Array,
    *,
    beta: float | Array,
) -> tuple[Array, Metrics]:
    """Hinge loss on the reference-normalised likelihood ratio (SLiC-HF / RSO "hinge-norm").

      L = max(0, 1 - beta Delta)

    Zhao et al. (2023), "SLiC-HF: Sequence Likelihood Calibration with Human Feedback", the
    rank calibration loss with margin delta = 1/beta; Liu et al. (2024), "Statistical
    Rejection Sampling Improves Preference Optimization", the hinge-norm loss. As TRL's
    `loss_type="hinge"`.

    Args:
      policy_chosen_logps_B, policy_rejected_logps_B, ref_chosen_logps_B, ref_rejected_logps_B:
        summed completion log-probs as in `dpo_loss`.
      beta: inverse margin.

    Returns:
      (loss, metrics) with the `dpo/*` names.
    """
    chosen_B, rejected_B = _log_ratios(
        policy_chosen_logps_B, policy_rejected_logps_B, ref_chosen_logps_B, ref_rejected_logps_B
    )
    loss = jnp.mean(jax.nn.relu(1.0 - beta * (chosen_B - rejected_B)))
    return loss, _pair_metrics("dpo", loss, beta * chosen_B, beta * rejected_B)


def simpo_loss(
    policy_chosen_logps_B: Array,
    policy_rejected_logps_B: Array,
    *,
    beta: float | Array,
    gamma: float | Array = 0.5,
    label_smoothing: float | Array = 0.0,
) -> tuple[Array, Metrics]:
    """SimPO: reference-free, length-normalised rewards with a target margin.

      L = - (1 - eps) log sigma(beta u - gamma) - eps log sigma(-(beta u - gamma)),
      u = A_theta(y_w) - A_theta(y_l)

    Meng, Xia & Chen (2024), "SimPO: Simple Preference Optimization with a Reference-Free
    Reward", Eq. 6 (eps = 0); as TRL's CPO trainer with `loss_type="simpo"`. TRL adds
    `cpo_alpha` x NLL(y_w) (default 1.0); pure SimPO has none: add `sft_loss` in the objective
    if wanted.

    Args:
      policy_chosen_logps_B: A_theta(y_w), *averaged* completion log-probs
        (`sequence_logprobs(..., average=True)`).
      policy_rejected_logps_B: A_theta(y_l).
      beta: reward scale.
      gamma: target reward margin.
      label_smoothing: eps, as in cDPO.

    Returns:
      (loss, metrics): `simpo/loss`, `simpo/accuracy`, `simpo/margin`, `simpo/chosen_reward`,
      `simpo/rejected_reward` (rewards beta * A).
    """
    chosen_B, rejected_B = _check_pairs(policy_chosen_logps_B, policy_rejected_logps_B)
    logits_B = beta * (chosen_B - rejected_B) - gamma
    loss = jnp.mean(_smoothed_logistic(logits_B, label_smoothing))
    return loss, _pair_metrics("simpo", loss, beta * chosen_B, beta * rejected_B)


def log1mexp(x: Array) -> Array:
    """log(1 - exp(x)) for x < 0, stable on both sides of -log 2 (Maechler, 2012)."""
    x = as_float(x)
    # Each branch is evaluated on a safe input so that neither the value nor its gradient is NaN.
    small = x < -jnp.log(2.0)
    x_small = jnp.where(small, x, -1.0)
    x_large = jnp.where(small, -1.0, x)
    return jnp.where(small, jnp.log1p(-jnp.exp(x_small)), jnp.log(-jnp.expm1(x_large)))


def orpo_loss(
    policy_chosen_logps_B: Array,
    policy_rejected_logps_B: Array,
    chosen_nll: Array,
    *,
    beta: float | Array = 0.1,
) -> tuple[Array, Metrics]:
    """ORPO: NLL of the chosen answer plus an odds-ratio preference term, no reference model.

      log_odds = (a_w - a_l) - (log(1 - e^{a_w}) - log(1 - e^{a_l})),  a = A_theta(y)
      L = NLL(y_w) - beta * mean_b log sigma(log_odds_b)

    Hong, Lee & Thorne (2024), "ORPO: Monolithic Preference Optimization without Reference
    Model", Eqs. 6-7 (lambda is `beta` here, as in TRL). For TRL parity `chosen_nll` is the token
    mean cross-entropy over the *prompt and response* tokens of the chosen sequence.

    Args:
      policy_chosen_logps_B: a_w = A_theta(y_w), averaged completion log-probs (< 0).
      policy_rejected_logps_B: a_l = A_theta(y_l).
      chosen_nll: scalar NLL of the chosen sequences (e.g. the loss of `sft_loss`).
      beta: lambda, the weight of the odds-ratio term.

    Returns:
      (loss, metrics): `orpo/loss`, `orpo/nll`, `orpo/log_odds_ratio` (mean log sigma),
      `orpo/log_odds`, and `orpo/accuracy`, `orpo/margin`, `orpo/chosen_reward`,
      `orpo/rejected_reward` (rewards beta * a).
    """
    chosen_B, rejected_B = _check_pairs(policy_chosen_logps_B, policy_rejected_logps_B)
    chex.assert_rank(chosen_nll, 0)
    log_odds_B = (chosen_B - rejected_B) - (log1mexp(chosen_B) - log1mexp(rejected_B))
    log_odds_ratio = jnp.mean(jax.nn.log_sigmoid(log_odds_B))
    loss = as_float(chosen_nll) - beta * log_odds_ratio
    metrics = _pair_metrics("orpo", loss, beta * chosen_B, beta * rejected_B)
    metrics.update(
        {
            "orpo/nll": chosen_nll,
            "orpo/log_odds_ratio": log_odds_ratio,
            "orpo/log_odds": jnp.mean(log_odds_B),
        }
    )
    return loss, metrics
