"""Drawing one token per row from float32 logits, as transformers' generate samples.

Order and semantics of transformers' logits warpers (`min_tokens_to_keep=1`): temperature ->
top-k -> top-p -> min-p, each keeping at least one token; temperature 0 is greedy (argmax).
The settings are traced scalars (`SamplingParams.arrays`), so changing them does not
recompile.

Nothing sorts the vocabulary (a sort of [B, V] is slow on CPU). With 1 <= top_k < TOP_K_CAP
the candidates come from `jax.lax.top_k` and top-p and min-p run on them, sorted (unless ties
of the k-th value reach the last candidate of a row); otherwise the
top-k and top-p thresholds are found by bisection on the values over the whole vocabulary.
Both give transformers' kept set (up to float rounding at a threshold and the order of tied
tokens, which are kept or dropped together). The draw itself is an inverse CDF with one
uniform number per row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

TOP_K_CAP = 64  # top-k below this many tokens takes the lax.top_k path


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How tokens are drawn (all off by default except temperature 1: plain sampling).

    Attributes:
      temperature: logits are divided by it; 0 means greedy (argmax).
      top_k: keep the tokens whose logit is at least the k-th largest (0 = off).
      top_p: keep the smallest set of most likely tokens with probability above top_p (1 = off).
      min_p: keep the tokens with probability at least min_p times the top one (0 = off).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"SamplingParams.temperature={self.temperature}: must be >= 0 "
                             "(0 is greedy)")
        if not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k={self.top_k!r}: must be an integer >= 0 "
                             "(0 is off)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p={self.top_p}: must be in (0, 1] (1 is off)")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"SamplingParams.min_p={self.min_p}: must be in [0, 1] (0 is off)")

    def arrays(self) -> dict[str, jax.Array]:
        """The settings as scalars for the compiled sampler."""
        return {"temperature": jnp.float32(self.temperature), "top_k": jnp.int32(self.top_k),
                "top_p": jnp.float32(self.top_p), "min_p": jnp.float32(self.min_p)}


GREEDY = SamplingParams(temperature=0.0)


def _ordered_keys(x_BV: jax.Array) -> jax.Array:
    """uint32 keys in the order of the float32 values (-0.0 counted as +0.0)."""
    bits = jax.lax.bitcast_convert_type(x_BV + 0.0, jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))


def _bisect(pred, keys_BV: jax.Array) -> jax.Array:
    """The smallest key m [B, 1] (over all uint32) with pred(m) true; pred is monotone in m and
    true at the largest key of each row. 32 halvings of the uint32 range, exactly."""
    b = keys_BV.shape[0]
    lo = jnp.zeros((b, 1), jnp.uint32)
    hi = jnp.max(keys_BV, axis=1, keepdims=True)

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        ok = pred(mid)
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    return jax.lax.fori_loop(0, 32, halve, (lo, hi))[0]


def truncate(scaled_BV: jax.Array, top_k: jax.Array, top_p: jax.Array, min_p: jax.Array
             ) -> jax.Array:
    """Top-k, then top-p, then min-p on (temperature-scaled) float32 logits [B, V].

    Each follows transformers' `TopKLogitsWarper`, `TopPLogitsWarper` and `MinPLogitsWarper`
    with `min_tokens_to_keep=1`: top-k keeps the logits >= the k-th largest (ties kept); top-p
    drops the tokens whose cumulative probability in ascending order is <= 1 - top_p, never the
    most likely; min-p drops the probabilities below min_p times the largest. The thresholds
    are found by bisection on the values instead of a sort over the vocabulary (tied tokens
    are kept or dropped together).

    Returns:
      The logits with the dropped ones at -inf.
    """
    vocab = scaled_BV.shape[-1]
    keys_BV = _ordered_keys(scaled_BV)

    def top_k_filter(x_BV):
        k = jnp.minimum(top_k, vocab).astype(jnp.int32)
        # the k-th largest key: the largest m with count(keys >= m) >= k
        kth_B1 = _bisect(lambda m: jnp.sum(keys_BV > m, axis=1, keepdims=True) < k, keys_BV)
        return jnp.where(keys_BV >= kth_B1, x_BV, -jnp.inf)

    def top_p_filter(x_BV):
        p_BV = jax.nn.softmax(x_BV, axis=-1)
        # the smallest m whose ascending cumulative probability exceeds 1 - top_p
        cut_B1 = _bisect(lambda m: jnp.sum(jnp.where(keys_BV <= m, p_BV, 0.0), axis=1,
                                           keepdims=True) > 1 - top_p, keys_BV)
        keep_BV = (keys_BV >= cut_B1) | (keys_BV == jnp.max(keys_BV, axis=1, keepdims=True))
        return jnp.where(keep_BV, x_BV, -jnp.inf)

    x_BV = jax.lax.cond(top_k > 0, top_k_filter, lambda x: x, scaled_BV)
    x_BV = jax.lax.cond(top_p < 1, top_p_filter, lambda x: x, x_BV)
    p_BV = jax.nn.softmax(x_BV, axis=-1)
    return jnp.where(p_BV < min_p * jnp.max(p_BV, axis=1, keepdims=True), -jnp.inf, x_BV)


def truncated_logits(logits_BV: jax.Array, settings: SamplingParams) -> jax.Array:
    """The logits a non-greedy `settings` samples from: scaled, truncated ones at -inf [B, V]."""
    k = settings.arrays()
    scaled_BV = jnp.asarray(logits_BV, jnp.float32) / k["temperature"]
    return truncate(scaled_BV, k["top_k"], k["top_p"], k["min_p"])


_CHUNK = 256  # vocabulary entries per block of the inverse-CDF search


def _cumsum(x_BN: jax.Array, *, reverse: bool = False) -> jax.Array:
    """Cumulative sums along the last axis (from the end if `reverse`) as one small matmul
    with a triangular matrix (a scan lowers to many small ops on CPU)."""
    i_N1, j_1N = jnp.arange(x_BN.shape[-1])[:, None], jnp.arange(x_BN.shape[-1])[None, :]
    tri_NN = ((i_N1 >= j_1N) if reverse else (i_N1 <= j_1N)).astype(x_BN.dtype)
    return jnp.dot(x_BN, tri_NN, precision=jax.lax.Precision.HIGHEST)


def inverse_cdf(logits_BV: jax.Array, u_B: jax.Array) -> jax.Array:
    """Token ids [B] drawn from softmax(logits_BV) with one uniform u in [0, 1) per row: the
    first token whose cumulative probability exceeds u (block sums first, then one block), so
    a draw costs one pass over the vocabulary. Tokens at -inf are never drawn."""
    b, vocab = logits_BV.shape
    pad = -vocab % _CHUNK
    p_BV = jnp.exp(logits_BV - jnp.max(logits_BV, axis=1, keepdims=True))
    p_BNC = jnp.pad(p_BV, ((0, 0), (0, pad))).reshape(b, -1, _CHUNK)
    cum_BN = _cumsum(jnp.sum(p_BNC, axis=2))
    target_B = u_B * cum_BN[:, -1]
    block_B = jnp.minimum(jnp.sum(cum_BN <= target_B[:, None], axis=1), cum_BN.shape[1] - 1)
    before_B = jnp.where(block_B > 0, _pick(cum_BN, jnp.maximum(block_B - 1, 0)), 0.0)
    p_BC = jnp.take_along_axis(p_BNC, block_B[:, None, None], axis=1)[:, 0]
    within_B = jnp.sum(before_B[:, None] + _cumsum(p_BC) <= target_B[:, None], axis=1)
    # rounding can overshoot the block's last drawable token: never return a zero-probability one
    last_B = jnp.max(jnp.where(p_BC > 0, jnp.arange(_CHUNK), 0), axis=1)
    return (block_B * _CHUNK + jnp.minimum(within_B, last_B)).astype(jnp.int32)


def _pick(x_BV: jax.Array, i_B: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x_BV, i_B[:, None], axis=1)[:, 0]


def _at(x_BK: jax.Array, i) -> jax.Array:
    """x_BK[:, i] [B, 1] by a one-hot sum: XLA:CPU lowers `jax.lax.top_k` to a full sort when
    its outputs are sliced or gathered from, but not for elementwise ops and reductions."""
    return jnp.sum(jnp.where(jnp.arange(x_BK.shape[1]) == i, x_BK, 0), axis=1, keepdims=True)


def _filter_candidates(s_BK: jax.Array, top_k: jax.Array, top_p: jax.Array,
                       min_p: jax.Array) -> jax.Array:
    """Top-k, top-p (transformers' ascending cumulative sums) and min-p on the largest logits,
    sorted descending (from `jax.lax.top_k`); the dropped ones at -inf."""
    s_BK = jnp.where(s_BK >= _at(s_BK, top_k - 1), s_BK, -jnp.inf)
    # transformers' cumulative probabilities in ascending order, i.e. suffix sums here
    cum_asc_BK = _cumsum(jax.nn.softmax(s_BK, axis=-1), reverse=True)
    drop_BK = (cum_asc_BK <= 1 - top_p).at[:, 0].set(False)
    s_BK = jnp.where(drop_BK & (top_p < 1), -jnp.inf, s_BK)
    p_BK = jax.nn.softmax(s_BK, axis=-1)
    drop_BK = (p_BK < min_p * jnp.max(p_BK, axis=1, keepdims=True)).at[:, 0].set(False)
    return jnp.where(drop_BK, -jnp.inf, s_BK)


def draw(logits_BV: jax.Array, knobs: Mapping[str, jax.Array], key: jax.Array
         ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One token per row: (token_B, sampling log-prob_B, model log-prob_B), in float32.

    Args:
      logits_BV: the model's logits.
      knobs: `SamplingParams.arrays()`.
      key: the randomness of this draw (unused when greedy).

    Returns:
      The tokens, their log-probs under the distribution they were drawn from (0 for greedy)
      and under softmax(logits_BV) (temperature 1, no truncation).
    """
    logits_BV = logits_BV.astype(jnp.float32)
    vocab = logits_BV.shape[-1]
    u_B = jax.random.uniform(key, logits_BV.shape[:1])

    def greedy(scaled_BV):
        tok_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
        return tok_B, jnp.zeros(tok_B.shape, jnp.float32)

    def full_vocab(scaled_BV):
        x_BV = truncate(scaled_BV, knobs["top_k"], knobs["top_p"], knobs["min_p"])
        tok_B = inverse_cdf(x_BV, u_B)
        return tok_B, _pick(x_BV, tok_B) - jax.nn.logsumexp(x_BV, axis=-1)

    def candidates(scaled_BV):
        """(token, log-prob, whether the candidates hold every kept token)."""
        s_BK, ids_BK = jax.lax.top_k(scaled_BV, TOP_K_CAP)
        # ties of the k-th value may reach past the candidates: then the whole vocabulary
        fits = jnp.all(jnp.min(s_BK, axis=1, keepdims=True) < _at(s_BK, knobs["top_k"] - 1))
        c_BK = _filter_candidates(s_BK, knobs["top_k"], knobs["top_p"], knobs["min_p"])
        i_B = inverse_cdf(c_BK, u_B)
        logp_B = _at(c_BK, i_B[:, None])[:, 0] - jax.nn.logsumexp(c_BK, axis=-1)
        return _at(ids_BK, i_B[:, None])[:, 0], logp_B, fits

    def sample(scaled_BV):
        k = knobs["top_k"]
        none = (jnp.zeros(scaled_BV.shape[:1], jnp.int32), jnp.zeros(scaled_BV.shape[:1]),
                jnp.bool_(False))
        tok_B, logp_B, fits = (none if vocab <= TOP_K_CAP else jax.lax.cond(
            (k > 0) & (k < TOP_K_CAP), candidates, lambda _: none, scaled_BV))
        return jax.lax.cond(fits, lambda _: (tok_B, logp_B), full_vocab, scaled_BV)

    scaled_BV = logits_BV / jnp.where(knobs["temperature"] == 0, 1.0, knobs["temperature"])
    tok_B, logp_B = jax.lax.cond(knobs["temperature"] == 0, greedy, sample, scaled_BV)
    return tok_B, logp_B, _pick(logits_BV, tok_B) - jax.nn.logsumexp(logits_BV, axis=-1)
