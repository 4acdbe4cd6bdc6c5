"""Supervised fine-tuning: the negative log-likelihood of the trained tokens."""

from __future__ import annotations

import chex
import jax.numpy as jnp

from alignjax.logprobs import Array, masked_count, masked_sum, target_mask
from alignjax.losses.common import Metrics, masked_mean_metric, normalize, sum_metric


def sft_loss(
    token_logps_BL: Array,
    loss_mask_BL: Array,
    *,
    per_sequence_sum: bool = False,
    normalizer: float | Array | None = None,
) -> tuple[Array, Metrics]:
    """Token-level cross-entropy (maximum likelihood), the SFT objective.

    With m_t the loss mask and log pi(y_t) the shifted token log-probs:

      token mean (default; TRL, PKU aligner, HF `outputs.loss`):
        L = - sum_{b,t} m_bt log pi(y_bt) / sum_{b,t} m_bt
      per-sequence sum (`per_sequence_sum=True`; the DPO reference code's SFT stage):
        L = - (1/B) sum_b sum_t m_bt log pi(y_bt)

    This is the language-modelling objective of Radford et al. (2018), "Improving Language
    Understanding by Generative Pre-Training", Eq. 1, restricted to the masked tokens.

    Args:
      token_logps_BL: from `alignjax.logprobs.token_logprobs` (aligned to targets).
      loss_mask_BL: 1 on the tokens to train on (e.g. completion + EOS), 0 elsewhere. Column 0 is
        never a target and is ignored.
      per_sequence_sum: sum over each sequence, then mean over the batch.
      normalizer: the denominator over the whole accumulated batch (tokens for the token mean,
        sequences for the per-sequence sum), so micro-batch losses add up exactly. Default: this
        batch's count.

    Returns:
      (loss, metrics) with `sft/loss` (this batch's loss as if unnormalised by `normalizer`,
      with `/sum` and `/count`) and the exact token mean `sft/nll` (+ `/sum`, `/count`).
    """
    chex.assert_rank(token_logps_BL, 2)
    chex.assert_equal_shape([token_logps_BL, loss_mask_BL])
    mask_BL = target_mask(loss_mask_BL)
    nll_BL = -token_logps_BL
    total = masked_sum(nll_BL, mask_BL)
    if per_sequence_sum:
        count = jnp.asarray(token_logps_BL.shape[0], total.dtype)
    else:
        count = masked_count(mask_BL)
    loss = normalize(total, count, normalizer)
    metrics = {**sum_metric("sft/loss", total, count),
               **masked_mean_metric("sft/nll", nll_BL, mask_BL)}
    return loss, metrics
