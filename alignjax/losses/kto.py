"""KTO: unpaired (desirable / undesirable) preference loss with a KL reference point."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from alignjax.logprobs import Array, as_float
from alignjax.losses.common import Metrics, masked_mean_metric


def kto_reference_point(policy_kl_logps_B: Array, ref_kl_logps_B: Array) -> Array:
    """KTO's reference point z = max(0, mean_b [S_theta(y'_b) - S_ref(y'_b)]), without gradient.

    The y' are *mismatched* completions (TRL pairs each prompt with the completion of the
    previous example in the batch), so the mean estimates KL(pi_theta || pi_ref). Under `jit`
    with a sharded batch the mean is over the global batch, as TRL's all-gather.

    Args:
      policy_kl_logps_B: summed log-probs of the mismatched completions under the policy.
      ref_kl_logps_B: the same under the reference model.

    Returns:
      z, a scalar.
    """
    chex.assert_rank([policy_kl_logps_B, ref_kl_logps_B], 1)
    chex.assert_equal_shape([policy_kl_logps_B, ref_kl_logps_B])
    kl = jnp.mean(as_float(policy_kl_logps_B) - as_float(ref_kl_logps_B))
    return jax.lax.stop_gradient(jnp.maximum(kl, 0.0))


def kto_loss(
    policy_logps_B: Array,
    ref_logps_B: Array,
    desirable_B: Array,
    *,
    beta: float | Array,
    reference_point: Array | float,
    desirable_weight: float | Array = 1.0,
    undesirable_weight: float | Array = 1.0,
) -> tuple[Array, Metrics]:
    """Kahneman-Tversky Optimization on unpaired examples.

    With r = S_theta(y) - S_ref(y) and the reference point z (`kto_reference_point`):

      desirable y:    l = lambda_D (1 - sigma(beta (r - z)))
      undesirable y:  l = lambda_U (1 - sigma(beta (z - r)))
      L = mean over the batch of l

    Ethayarajh et al. (2024), "KTO: Model Alignment as Prospect Theoretic Optimization"
    (arXiv:2402.01306), Eq. 7 (loss lambda_y - v(x, y) up to the constant lambda_y); as TRL's
    `KTOTrainer` and OpenRLHF's `KTOLoss`. z carries no gradient.

    Args:
      policy_logps_B: summed completion log-probs S_theta(y).
      ref_logps_B: S_ref(y).
      desirable_B: bool (or 0/1), True for desirable examples.
      beta: inverse temperature.
      reference_point: z, e.g. `kto_reference_point(...)`; 0 drops it.
      desirable_weight: lambda_D.
      undesirable_weight: lambda_U.

    Returns:
      (loss, metrics): `kto/loss`, `kto/reference_point`, and the exact subset means
      `kto/chosen_reward`, `kto/rejected_reward` (beta * r over desirable / undesirable
      examples, each with `/sum` and `/count`).
    """
    chex.assert_rank([policy_logps_B, ref_logps_B, desirable_B], 1)
    chex.assert_equal_shape([policy_logps_B, ref_logps_B, desirable_B])
    log_ratio_B = as_float(policy_logps_B) - as_float(ref_logps_B)
    z = jax.lax.stop_gradient(as_float(jnp.asarray(reference_point)))
    desirable_B = desirable_B.astype(bool)
    per_example_B = jnp.where(
        desirable_B,
        desirable_weight * (1.0 - jax.nn.sigmoid(beta * (log_ratio_B - z))),
        undesirable_weight * (1.0 - jax.nn.sigmoid(beta * (z - log_ratio_B))),
    )
    loss = jnp.mean(per_example_B)
    rewards_B = jax.lax.stop_gradient(beta * log_ratio_B)
    return loss, {
        "kto/loss": loss,
        "kto/reference_point": z,
        **masked_mean_metric("kto/chosen_reward", rewards_B, desirable_B),
        **masked_mean_metric("kto/rejected_reward", rewards_B, ~desirable_B),
    }
