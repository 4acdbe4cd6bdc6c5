"""Aligner: learning the correction of an upstream answer (Ji et al., 2024)."""

from __future__ import annotations

import chex
import jax.numpy as jnp

from alignjax.logprobs import Array, as_float, masked_count, masked_sum
from alignjax.losses.common import Metrics, masked_mean_metric, normalize, sum_metric


def aligner_mask(attention_mask_BL: Array, correction_start_B: Array) -> Array:
    """1 on the correction tokens and the EOS after them, 0 on question, original answer, pads.

    Args:
      attention_mask_BL: 1 on real tokens (the sequence ends with the correction and its EOS).
      correction_start_B: index of the first correction token in each row (>= 1).

    Returns:
      mask_BL (float).
    """
    chex.assert_rank(attention_mask_BL, 2)
    chex.assert_rank(correction_start_B, 1)
    chex.assert_equal_shape_prefix([attention_mask_BL, correction_start_B], 1)
    positions_L = jnp.arange(attention_mask_BL.shape[1])
    after_start_BL = positions_L[None, :] >= jnp.maximum(correction_start_B[:, None], 1)
    return as_float(attention_mask_BL) * after_start_BL


def aligner_loss(
    token_logps_BL: Array,
    attention_mask_BL: Array,
    correction_start_B: Array,
    *,
    normalizer: float | Array | None = None,
) -> tuple[Array, Metrics]:
    """Residual-correction objective of the Aligner, min_phi -log mu_phi(y_c | y_o, x).

    Ji et al. (2024), "Aligner: Efficient Alignment by Learning to Correct" (arXiv:2402.02416),
    Sec. 3: the Aligner mu_phi is trained by maximum likelihood on (question x, original answer
    y_o, correction y_c) triples,

      L = - E_{(x, y_o, y_c)} log mu_phi(y_c | y_o, x)
        = - sum_{b,t} c_bt log mu_phi(y_bt | y_b,<t) / sum_{b,t} c_bt,

    where c_bt = 1 exactly on the correction tokens and their EOS: the formatted question and
    original answer are context only (the PKU-Alignment/aligner code labels them -100 and uses
    the token-mean cross-entropy, which is this reduction).

    Args:
      token_logps_BL: from `alignjax.logprobs.token_logprobs` on the formatted x + y_o + y_c.
      attention_mask_BL: 1 on real tokens, 0 on padding.
      correction_start_B: index of the first token of y_c in each row.
      normalizer: correction-token count over the whole accumulated batch (default: this one's).

    Returns:
      (loss, metrics) with `aligner/loss` and the exact token mean `aligner/nll` (+ `/sum`,
      `/count`).
    """
    chex.assert_rank(token_logps_BL, 2)
    chex.assert_equal_shape([token_logps_BL, attention_mask_BL])
    mask_BL = aligner_mask(attention_mask_BL, correction_start_B)
    nll_BL = -token_logps_BL
    total, count = masked_sum(nll_BL, mask_BL), masked_count(mask_BL)
    loss = normalize(total, count, normalizer)
    return loss, {**sum_metric("aligner/loss", total, count),
                  **masked_mean_metric("aligner/nll", nll_BL, mask_BL)}
