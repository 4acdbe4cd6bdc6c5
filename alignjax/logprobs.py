"""The one bridge from model outputs to log-probs: every loss reads what this module computes.

Conventions (shared by every loss in `alignjax.losses`):

* Per-token log-probs are returned **aligned to the target tokens**: `logps_BL[:, t]` is
  log pi(y_t | y_<t), computed from the logits at position t - 1 (logits at position t predict
  token t + 1). Column 0 has no logit that predicts it and is always 0.0, so a token mask can be
  applied directly (`mask_BL` marks the tokens to train on) and column 0 of any mask is ignored.
* Log-probs are computed in float32 (float64 inputs stay float64) whatever the logits dtype.
* Masked means divide by `max(count, 1)`: a fully masked row or batch gives 0, never NaN.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = chex.ArrayTree


def as_float(x: Array) -> Array:
    """Casts to at least float32 (bfloat16/float16 -> float32; float64 stays float64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _pad_first_column(logps_BT: Array) -> Array:
    """Shifts log-probs of targets 1..L-1 into a B x L array with 0.0 at column 0."""
    return jnp.pad(logps_BT, ((0, 0), (1, 0)))


def token_logprobs(logits_BLV: Array, input_ids_BL: Array, *, temperature: float = 1.0) -> Array:
    """Per-token log-probs of `input_ids_BL` under `logits_BLV`, shifted by one, in float32.

    Args:
      logits_BLV: model outputs; the logits at position t predict token t + 1.
      input_ids_BL: the tokens that were fed to the model (integer).
      temperature: the logits are divided by it (PPO-style sampling temperature), default 1.

    Returns:
      logps_BL with, for t >= 1,
      `logps_BL[:, t] = log_softmax(logits_BLV[:, t - 1] / temperature)[input_ids_BL[:, t]]`,
        and 0.0 at t = 0.
    """
    chex.assert_rank(logits_BLV, 3)
    chex.assert_rank(input_ids_BL, 2)
    chex.assert_equal_shape_prefix([logits_BLV, input_ids_BL], 2)
    logits_BTV = as_float(logits_BLV[:, :-1]) / temperature
    targets_BT = input_ids_BL[:, 1:]
    # log_softmax(x)[y] = x[y] - logsumexp(x): avoids a second B x L x V array in the forward pass.
    picked_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    return _pad_first_column(picked_BT - jax.nn.logsumexp(logits_BTV, axis=-1))


def values_before_tokens(values_BL: Array) -> Array:
    """Per-token critic (or reward-head) outputs aligned like `token_logprobs`.

    A scalar head at position t has read tokens 0..t, so its output is the value of the state
    *after* token t, which is the state in which token t + 1 is chosen. Aligned to actions,
    `out[:, t] = values_BL[:, t - 1]`: the value of the state before token t, the baseline of the
    action whose log-prob is `token_logprobs(...)[:, t]`. Column 0 is 0.0, as for log-probs, so
    a response mask selects values, log-probs and rewards of the same actions (GAE needs
    exactly this: `gae(rewards_BL, values_before_tokens(v_BL), response_mask_BL)`).

    Args:
      values_BL: the head's output per position, e.g. `ScalarHeadModel(...)(ids, mask)`.

    Returns:
      values_BL shifted right by one, in float32, with 0.0 at column 0.
    """
    chex.assert_rank(values_BL, 2)
    return _pad_first_column(as_float(values_BL)[:, :-1])


def token_logprobs_from_hidden(
    hidden_BLD: Array,
    w_DV: Array,
    input_ids_BL: Array,
    *,
    chunk_size: int = 256,
    temperature: float = 1.0,
) -> Array:
    """Memory-light `token_logprobs`: projects final hidden states to the vocabulary chunk by chunk.

    Equivalent to `token_logprobs(hidden_BLD @ w_DV, input_ids_BL)` but only one
    B x chunk_size x V float32 block of logits exists at a time, in the forward and in the
    backward pass: the chunks run under `jax.lax.map` and the chunk function is wrapped in
    `jax.checkpoint`, so its logits are recomputed, not stored, when differentiating.

    Args:
      hidden_BLD: final hidden states (after the last norm), any float dtype.
      w_DV: output embedding matrix (for tied embeddings pass `embedding_VD.T`).
      input_ids_BL: the tokens that were fed to the model (integer).
      chunk_size: sequence positions per chunk; L is padded up to a multiple of it.
      temperature: the logits are divided by it, default 1.

    Returns:
      logps_BL: as `token_logprobs`, float32 (float64 if the inputs are float64).
    """
    chex.assert_rank(hidden_BLD, 3)
    chex.assert_rank(w_DV, 2)
    chex.assert_rank(input_ids_BL, 2)
    chex.assert_equal_shape_prefix([hidden_BLD, input_ids_BL], 2)
    batch, length, width = hidden_BLD.shape
    if w_DV.shape[0] != width:
        raise ValueError(f"w_DV has shape {w_DV.shape}; its first axis must be D = {width}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunk = min(chunk_size, length)
    num_chunks = -(-length // chunk)
    pad = num_chunks * chunk - length
    # Position t predicts token t + 1; the last position predicts nothing (target 0, dropped below).
    targets_BL = jnp.pad(input_ids_BL[:, 1:], ((0, 0), (0, 1 + pad)))
    hidden_BLD = jnp.pad(hidden_BLD, ((0, 0), (0, pad), (0, 0)))
    hidden_NBCD = hidden_BLD.reshape(batch, num_chunks, chunk, width).swapaxes(0, 1)
    targets_NBC = targets_BL.reshape(batch, num_chunks, chunk).swapaxes(0, 1)
    out_dtype = jnp.promote_types(jnp.result_type(hidden_BLD, w_DV), jnp.float32)

    @jax.checkpoint
    def chunk_logprobs(hidden_BCD: Array, targets_BC: Array) -> Array:
        logits_BCV = jnp.einsum(
            "bcd,dv->bcv", hidden_BCD, w_DV, preferred_element_type=out_dtype
        ).astype(out_dtype)
        logits_BCV = logits_BCV / temperature
        picked_BC = jnp.take_along_axis(logits_BCV, targets_BC[..., None], axis=-1)[..., 0]
        return picked_BC - jax.nn.logsumexp(logits_BCV, axis=-1)

    logps_NBC = jax.lax.map(lambda xs: chunk_logprobs(*xs), (hidden_NBCD, targets_NBC))
    logps_BL = logps_NBC.swapaxes(0, 1).reshape(batch, num_chunks * chunk)
    return _pad_first_column(logps_BL[:, : length - 1])


def token_entropy_from_hidden(
    hidden_BLD: Array, w_DV: Array, *, chunk_size: int = 256, temperature: float = 1.0
) -> Array:
    """Entropy of the next-token distribution, aligned like `token_logprobs_from_hidden`.

    `out[:, t]` is H(pi(. | y_<t)) = logsumexp(z) - sum_v softmax(z)_v z_v of the logits z at
    position t - 1: the entropy of the distribution token t was drawn from. Column 0 is 0.0.
    Only one B x chunk_size x V block of logits exists at a time; no gradient is kept (this is a
    reported statistic, not a loss term).

    Args:
      hidden_BLD: final hidden states (after the last norm).
      w_DV: output embedding matrix.
      chunk_size: sequence positions per chunk.
      temperature: the logits are divided by it, default 1.

    Returns:
      entropy_BL in float32 (float64 for float64 inputs).
    """
    chex.assert_rank(hidden_BLD, 3)
    chex.assert_rank(w_DV, 2)
    batch, length, width = hidden_BLD.shape
    chunk = min(max(chunk_size, 1), length)
    num_chunks = -(-length // chunk)
    pad = num_chunks * chunk - length
    hidden_BLD = jnp.pad(jax.lax.stop_gradient(hidden_BLD), ((0, 0), (0, pad), (0, 0)))
    hidden_NBCD = hidden_BLD.reshape(batch, num_chunks, chunk, width).swapaxes(0, 1)
    out_dtype = jnp.promote_types(jnp.result_type(hidden_BLD, w_DV), jnp.float32)

    def chunk_entropy(hidden_BCD: Array) -> Array:
        logits_BCV = jnp.einsum("bcd,dv->bcv", hidden_BCD, jax.lax.stop_gradient(w_DV),
                                preferred_element_type=out_dtype).astype(out_dtype)
        logits_BCV = logits_BCV / temperature
        lse_BC = jax.nn.logsumexp(logits_BCV, axis=-1)
        probs_BCV = jnp.exp(logits_BCV - lse_BC[..., None])
        return lse_BC - jnp.sum(probs_BCV * logits_BCV, axis=-1)

    entropy_NBC = jax.lax.map(chunk_entropy, hidden_NBCD)
    entropy_BL = entropy_NBC.swapaxes(0, 1).reshape(batch, num_chunks * chunk)
    return _pad_first_column(entropy_BL[:, : length - 1])


def target_mask(mask_BL: Array) -> Array:
    """The mask as a float array with column 0 (never a prediction target) zeroed."""
    chex.assert_rank(mask_BL, 2)
    return as_float(mask_BL).at[:, 0].set(0.0)


def masked_sum(x: Array, mask: Array, axis: int | tuple[int, ...] | None = None) -> Array:
    """Sum of `x` where `mask` is nonzero; masked entries (even inf/NaN) contribute exactly 0."""
    chex.assert_equal_shape([x, mask])
    x = as_float(x)
    return jnp.sum(jnp.where(mask != 0, x * mask.astype(x.dtype), 0.0), axis=axis)


def masked_count(mask: Array, axis: int | tuple[int, ...] | None = None) -> Array:
    """Number of (weight of) unmasked entries, as float."""
    return jnp.sum(as_float(mask), axis=axis)


def masked_mean(x: Array, mask: Array, axis: int | tuple[int, ...] | None = None) -> Array:
    """Mean of `x` over unmasked entries; 0 (not NaN) where nothing is unmasked."""
    return masked_sum(x, mask, axis) / jnp.maximum(masked_count(mask, axis), 1.0)


def sequence_logprobs(token_logps_BL: Array, mask_BL: Array, *, average: bool = False) -> Array:
    """Per-sequence log-prob S(y) = sum_t m_t log pi(y_t | y_<t), or its mean A(y) = S(y) / |y|.

    Args:
      token_logps_BL: output of `token_logprobs` (aligned to targets, column 0 ignored).
      mask_BL: 1 on the tokens of y (completion tokens incl. EOS), 0 on prompt and padding.
      average: return A(y) (SimPO, ORPO, TRL's IPO) instead of S(y) (DPO, KTO).

    Returns:
      logps_B; a fully masked row gives 0.
    """
    chex.assert_equal_shape([token_logps_BL, mask_BL])
    mask_BL = target_mask(mask_BL)
    if average:
        return masked_mean(token_logps_BL, mask_BL, axis=-1)
    return masked_sum(token_logps_BL, mask_BL, axis=-1)


def sequence_lengths(mask_BL: Array) -> Array:
    """|y| = number of target tokens per row (column 0 excluded), float."""
    return masked_count(target_mask(mask_BL), axis=-1)


def concat_pair(chosen: PyTree, rejected: PyTree, *, pad_value: float = 0) -> PyTree:
    """Stacks chosen over rejected for one forward pass: [chosen; rejected] along axis 0.

    Leaves of rank >= 2 are padded at the end of axis 1 to the longer of the two lengths, so a
    chosen_BL and a rejected_BM become one 2B x max(L, M) array.

    Args:
      chosen: a B-leading array or pytree of them (e.g. {"input_ids": ..., "mask": ...}).
      rejected: same structure, same B.
      pad_value: fill for the padded positions (the masks there are 0 whatever it is).

    Returns:
      The same structure with leading axis 2B; `split_pair` undoes it.
    """

    def cat(c: Array, r: Array) -> Array:
        if c.shape[0] != r.shape[0]:
            raise ValueError(f"chosen and rejected batch sizes differ: {c.shape} vs {r.shape}")
        if c.ndim >= 2 and c.shape[1] != r.shape[1]:
            length = max(c.shape[1], r.shape[1])

            def pad(x: Array) -> Array:
                widths = [(0, 0)] * x.ndim
                widths[1] = (0, length - x.shape[1])
                return jnp.pad(x, widths, constant_values=pad_value)

            c, r = pad(c), pad(r)
        return jnp.concatenate([c, r], axis=0)

    return jax.tree.map(cat, chosen, rejected)


def split_pair(x: PyTree) -> tuple[PyTree, PyTree]:
    """Splits a [chosen; rejected] 2B-leading array or pytree into (chosen, rejected)."""
    leaves = jax.tree.leaves(x)
    if any(leaf.shape[0] % 2 for leaf in leaves):
        raise ValueError("split_pair needs an even leading axis (2B)")
    chosen = jax.tree.map(lambda a: a[: a.shape[0] // 2], x)
    rejected = jax.tree.map(lambda a: a[a.shape[0] // 2 :], x)
    return chosen, rejected
