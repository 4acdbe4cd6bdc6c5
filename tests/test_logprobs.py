"""alignjax.logprobs against a float64 NumPy log-softmax, and the chunked variant against both.

The reference is written from the definition (shift by one: the logits at t - 1 score token t;
column 0 is 0). JAX runs under x64 with float64 inputs, so agreement is to 1e-6 or better.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax import logprobs as lp

TOL = {"rtol": 1e-6, "atol": 1e-6}


def _np_token_logprobs(logits, ids):
    batch, length, _ = logits.shape
    out = np.zeros((batch, length))
    for b in range(batch):
        for t in range(1, length):
            row = logits[b, t - 1]
            top = row.max()
            out[b, t] = row[ids[b, t]] - (top + np.log(np.exp(row - top).sum()))
    return out


def _batch(seed=0, batch=3, length=11, vocab=17, width=8):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(batch, length, width))
    w = rng.normal(size=(width, vocab))
    ids = rng.integers(0, vocab, size=(batch, length))
    # Uneven completions: prompt of p tokens, completion of c tokens, then padding.
    mask = np.zeros((batch, length))
    for b, (p, c) in enumerate([(2, 6), (4, 7), (1, 0)][:batch]):
        mask[b, p : p + c] = 1.0
    return hidden, w, ids, mask


def test_token_logprobs_matches_numpy_float64():
    hidden, w, ids, _ = _batch()
    logits = hidden @ w
    with jax.enable_x64(True):
        got = lp.token_logprobs(jnp.asarray(logits), jnp.asarray(ids))
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), _np_token_logprobs(logits, ids), **TOL)
        got_t = lp.token_logprobs(jnp.asarray(logits), jnp.asarray(ids), temperature=0.7)
        np.testing.assert_allclose(np.asarray(got_t), _np_token_logprobs(logits / 0.7, ids), **TOL)


def test_token_logprobs_low_precision_logits_give_float32():
    hidden, w, ids, _ = _batch()
    logits = jnp.asarray(hidden @ w, jnp.bfloat16)
    got = lp.token_logprobs(logits, jnp.asarray(ids))
    assert got.dtype == jnp.float32
    want = _np_token_logprobs(np.asarray(logits.astype(jnp.float32), np.float64), ids)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 4, 11, 64])
def test_chunked_from_hidden_matches_plain_and_numpy(chunk_size):
    hidden, w, ids, _ = _batch(seed=1)
    with jax.enable_x64(True):
        h, wj, idj = jnp.asarray(hidden), jnp.asarray(w), jnp.asarray(ids)
        chunked = lp.token_logprobs_from_hidden(h, wj, idj, chunk_size=chunk_size)
        plain = lp.token_logprobs(h @ wj, idj)
        np.testing.assert_allclose(np.asarray(chunked), np.asarray(plain), **TOL)
        np.testing.assert_allclose(np.asarray(chunked), _np_token_logprobs(hidden @ w, ids), **TOL)


def test_chunked_from_hidden_gradients_match_plain():
    hidden, w, ids, mask = _batch(seed=2)
    with jax.enable_x64(True):
        h, wj, idj, m = map(jnp.asarray, (hidden, w, ids, mask))

        def plain(h, wj):
            return jnp.sum(lp.token_logprobs(h @ wj, idj) * m)

        def chunked(h, wj):
            return jnp.sum(lp.token_logprobs_from_hidden(h, wj, idj, chunk_size=4) * m)

        grads_plain = jax.jit(jax.grad(plain, (0, 1)))(h, wj)
        grads_chunked = jax.jit(jax.grad(chunked, (0, 1)))(h, wj)
        for g_plain, g_chunked in zip(grads_plain, grads_chunked, strict=True):
            np.testing.assert_allclose(np.asarray(g_chunked), np.asarray(g_plain), **TOL)


def test_chunked_from_hidden_never_materialises_full_logits():
    """Compiled value-and-grad: temporaries stay far below one B x L x V float32 array."""
    batch, length, width, vocab = 2, 512, 32, 4096
    h = jnp.zeros((batch, length, width), jnp.float32)
    w = jnp.zeros((width, vocab), jnp.float32)
    ids = jnp.zeros((batch, length), jnp.int32)
    full_logits_bytes = batch * length * vocab * 4

    def temp_bytes(fn):
        compiled = jax.jit(jax.value_and_grad(fn, (0, 1))).lower(h, w).compile()
        analysis = compiled.memory_analysis()
        if analysis is None:
            pytest.skip("this backend gives no memory analysis")
        return analysis.temp_size_in_bytes

    plain = temp_bytes(lambda h, w: jnp.sum(lp.token_logprobs(h @ w, ids)))
    chunked = temp_bytes(
        lambda h, w: jnp.sum(lp.token_logprobs_from_hidden(h, w, ids, chunk_size=32))
    )
    assert plain >= full_logits_bytes  # the check can see a full logits array when there is one
    assert chunked < full_logits_bytes / 4


def test_sequence_logprobs_sum_mean_and_empty_rows():
    rng = np.random.default_rng(3)
    logps = -rng.random((3, 11))
    logps[:, 0] = 0.0
    _, _, _, mask = _batch()
    mask[0, 0] = 1.0  # column 0 is never a target: must be ignored
    with jax.enable_x64(True):
        s = lp.sequence_logprobs(jnp.asarray(logps), jnp.asarray(mask))
        a = lp.sequence_logprobs(jnp.asarray(logps), jnp.asarray(mask), average=True)
        n = lp.sequence_lengths(jnp.asarray(mask))
    for b in range(3):
        idx = [t for t in range(1, 11) if mask[b, t]]
        np.testing.assert_allclose(float(s[b]), sum(logps[b, t] for t in idx), **TOL)
        assert float(n[b]) == len(idx)
        want_mean = sum(logps[b, t] for t in idx) / len(idx) if idx else 0.0
        np.testing.assert_allclose(float(a[b]), want_mean, **TOL)
    assert np.all(np.isfinite(np.asarray(a)))


def test_masked_mean_ignores_nonfinite_masked_entries_and_empty_masks():
    x = jnp.array([[1.0, jnp.inf, jnp.nan], [2.0, 3.0, -jnp.inf]])
    mask = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert float(lp.masked_mean(x, mask)) == 1.0
    np.testing.assert_array_equal(np.asarray(lp.masked_mean(x, mask, axis=-1)), [1.0, 0.0])
    grad = jax.grad(lambda x: lp.masked_mean(x, mask))(jnp.where(jnp.isfinite(x), x, 0.0))
    assert np.all(np.isfinite(np.asarray(grad)))


def test_concat_then_split_pair_roundtrip_with_uneven_lengths():
    chosen = {"ids": jnp.arange(6).reshape(2, 3) + 1, "mask": jnp.ones((2, 3)), "n": jnp.ones(2)}
    rejected = {
        "ids": jnp.arange(10).reshape(2, 5) + 1,
        "mask": jnp.ones((2, 5)),
        "n": jnp.zeros(2),
    }
    both = lp.concat_pair(chosen, rejected, pad_value=0)
    assert both["ids"].shape == (4, 5) and both["n"].shape == (4,)
    c, r = lp.split_pair(both)
    np.testing.assert_array_equal(np.asarray(c["ids"][:, :3]), np.asarray(chosen["ids"]))
    np.testing.assert_array_equal(np.asarray(c["ids"][:, 3:]), 0)
    np.testing.assert_array_equal(np.asarray(c["mask"][:, 3:]), 0)
    np.testing.assert_array_equal(np.asarray(r["ids"]), np.asarray(rejected["ids"]))
    np.testing.assert_array_equal(np.asarray(r["n"]), 0)


def test_one_forward_pass_on_pairs_equals_two_passes():
    """Padding the shorter side and splitting after one pass changes no sequence log-prob."""
    _, _, ids, mask = _batch(seed=4, batch=2, length=9)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    chosen, rejected = (ids[:, :7], mask[:, :7]), (ids, mask)
    # A causal "model": the logits at t depend only on the token at t (a lookup table).
    table = jnp.asarray(np.random.default_rng(5).normal(size=(17, 17)), jnp.float32)

    @jax.jit
    def sequence_logps(ids_BL, mask_BL):
        return lp.sequence_logprobs(lp.token_logprobs(table[ids_BL], ids_BL), mask_BL)

    seq_chosen, seq_rejected = lp.split_pair(sequence_logps(*lp.concat_pair(chosen, rejected)))
    np.testing.assert_allclose(
        np.asarray(seq_chosen), np.asarray(sequence_logps(*chosen)), rtol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(seq_rejected), np.asarray(sequence_logps(*rejected)), rtol=1e-6
    )
