"""Losses: pure functions of arrays returning `(loss, metrics)`.

None of them sees a model, params or config; they read the log-probs of `alignjax.logprobs`.
Metric names are fixed (`dpo/accuracy`, `rm/accuracy`, `ppo/clipfrac`, ...); masked means come
with `/sum` and `/count` so `merge_metrics` is exact over micro-batches (see `common`).

  sft.py         sft_loss
  aligner.py     aligner_loss, aligner_mask
  reward.py      bradley_terry_loss
  preference.py  dpo_loss, robust_dpo_loss, ipo_loss, hinge_loss, simpo_loss, orpo_loss
  kto.py         kto_loss, kto_reference_point
  rl.py          ppo_policy_loss, value_loss, reinforce_loss, kl_loss
  advantages.py  gae, masked_whiten, rloo_advantages, grpo_advantages, kl_penalty,
                 shaped_rewards, adaptive_kl_update
  curves.py      loss_and_weight: each example's loss and gradient weight -dL/d(margin)
"""

from alignjax.losses.advantages import (
    adaptive_kl_update,
    gae,
    grpo_advantages,
    kl_penalty,
    masked_whiten,
    rloo_advantages,
    shaped_rewards,
)
from alignjax.losses.aligner import aligner_loss, aligner_mask
from alignjax.losses.common import Metrics, masked_mean_metric, merge_metrics
from alignjax.losses.curves import loss_and_weight
from alignjax.losses.kto import kto_loss, kto_reference_point
from alignjax.losses.preference import (
    dpo_loss,
    hinge_loss,
    ipo_loss,
    log1mexp,
    orpo_loss,
    robust_dpo_loss,
    simpo_loss,
)
from alignjax.losses.reward import bradley_terry_loss
from alignjax.losses.rl import kl_loss, ppo_policy_loss, reinforce_loss, value_loss
from alignjax.losses.sft import sft_loss

__all__ = [
    "Metrics",
    "adaptive_kl_update",
    "aligner_loss",
    "aligner_mask",
    "bradley_terry_loss",
    "dpo_loss",
    "gae",
    "grpo_advantages",
    "hinge_loss",
    "ipo_loss",
    "kl_loss",
    "kl_penalty",
    "kto_loss",
    "kto_reference_point",
    "log1mexp",
    "loss_and_weight",
    "masked_mean_metric",
    "masked_whiten",
    "merge_metrics",
    "orpo_loss",
    "ppo_policy_loss",
    "reinforce_loss",
    "rloo_advantages",
    "robust_dpo_loss",
    "sft_loss",
    "shaped_rewards",
    "simpo_loss",
    "value_loss",
]
