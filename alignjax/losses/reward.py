"""Pairwise reward-model loss (Bradley-Terry)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from alignjax.logprobs import Array, as_float
from alignjax.losses.common import Metrics


def bradley_terry_loss(
    chosen_rewards_B: Array,
    rejected_rewards_B: Array,
    *,
    margin: Array | float | None = None,
    center_coef: float = 0.0,
) -> tuple[Array, Metrics]:
    """Bradley-Terry negative log-likelihood of the preferences, with optional margin and centring.

      L = - mean_b log sigma(r_w,b - r_l,b - m_b) + c * mean_b (r_w,b + r_l,b)^2

    Bradley & Terry (1952); as a reward-model loss Ouyang et al. (2022), "Training language models
    to follow instructions with human feedback", Eq. 1. The margin m is the Llama-2 margin loss
    (Touvron et al., 2023, Eq. 2); the centring term with coefficient c is TRL's
    `center_rewards_coefficient` (Eisenstein et al., 2023, "Helping or Herding?"). With
    c = 0 and no margin this equals OpenRLHF's `PairWiseLoss` and `LogExpLoss`.

    Args:
      chosen_rewards_B: scalar rewards of the preferred responses.
      rejected_rewards_B: scalar rewards of the dispreferred responses.
      margin: per-pair margin m_B (or a scalar); None means 0.
      center_coef: c, the weight of the penalty that keeps rewards centred at zero.

    Returns:
      (loss, metrics): `rm/loss`, `rm/accuracy` (mean[r_w > r_l]), `rm/margin`
      (mean[r_w - r_l]), `rm/chosen_reward`, `rm/rejected_reward`.
    """
    chex.assert_rank([chosen_rewards_B, rejected_rewards_B], 1)
    chex.assert_equal_shape([chosen_rewards_B, rejected_rewards_B])
    chosen_B, rejected_B = as_float(chosen_rewards_B), as_float(rejected_rewards_B)
    diff_B = chosen_B - rejected_B
    logits_B = diff_B if margin is None else diff_B - as_float(jnp.asarray(margin))
    loss = -jnp.mean(jax.nn.log_sigmoid(logits_B))
    loss = loss + center_coef * jnp.mean((chosen_B + rejected_B) ** 2)
    metrics = {
        "rm/loss": loss,
        "rm/accuracy": jnp.mean((diff_B > 0).astype(diff_B.dtype)),
        "rm/margin": jnp.mean(diff_B),
        "rm/chosen_reward": jnp.mean(chosen_B),
        "rm/rejected_reward": jnp.mean(rejected_B),
    }
    return loss, metrics
