"""Exact metric merging (micro-batches and uneven held-out batches) and the metrics writer."""

import jax.numpy as jnp
import numpy as np

from alignjax import losses
from alignjax import metrics as metrics_lib


def _pair_metrics(chosen, rejected):
    _, m = losses.dpo_loss(jnp.asarray(chosen), jnp.asarray(rejected), jnp.zeros(len(chosen)),
                           jnp.zeros(len(chosen)), beta=0.1)
    return m


def test_plain_means_merge_exactly_over_equal_micro_batches():
    rng = np.random.default_rng(0)
    chosen, rejected = rng.normal(size=8), rng.normal(size=8)
    full = _pair_metrics(chosen, rejected)
    parts = [_pair_metrics(chosen[i:i + 2], rejected[i:i + 2]) for i in range(0, 8, 2)]
    merged = losses.merge_metrics({k: jnp.stack([p[k] for p in parts]) for k in full})
    for key in full:
        np.testing.assert_allclose(float(merged[key]), float(full[key]), rtol=1e-6, err_msg=key)


def test_uneven_batches_merge_exactly_by_row_weights():
    """Held-out sets end in a short batch: plain means are weighted by rows, masked means come
    from their sums and counts, so the result is that of one batch holding every row."""
    rng = np.random.default_rng(1)
    chosen, rejected = rng.normal(size=7), rng.normal(size=7)
    full = _pair_metrics(chosen, rejected)
    parts = [(_pair_metrics(chosen[a:b], rejected[a:b]), b - a) for a, b in ((0, 3), (3, 6),
                                                                             (6, 7))]
    merged = metrics_lib.merge_weighted(parts)
    for key in full:
        np.testing.assert_allclose(merged[key], float(full[key]), rtol=1e-6, err_msg=key)
    # a plain mean of the per-batch means would be wrong here
    naive = np.mean([float(p[0]["dpo/accuracy"]) for p in parts])
    assert abs(naive - float(full["dpo/accuracy"])) > 1e-3

    token_losses = rng.normal(size=(7, 5))
    mask = (rng.random((7, 5)) > 0.3).astype(np.float32)
    whole = losses.masked_mean_metric("x", jnp.asarray(token_losses), jnp.asarray(mask))
    pieces = [(losses.masked_mean_metric("x", jnp.asarray(token_losses[a:b]),
                                         jnp.asarray(mask[a:b])), b - a)
              for a, b in ((0, 3), (3, 6), (6, 7))]
    np.testing.assert_allclose(metrics_lib.merge_weighted(pieces)["x"], float(whole["x"]),
                               rtol=1e-6)


def test_writer_drops_rows_past_the_resumed_step(tmp_path):
    writer = metrics_lib.Writer(str(tmp_path))
    for step in (0, 1, 2, 3):
        writer.write(step, {"train/loss": float(step)})
    writer.close()
    # a run killed after logging step 3 but before its checkpoint resumes from step 2
    writer = metrics_lib.Writer(str(tmp_path), resume_step=2)
    writer.write(3, {"train/loss": 30.0})
    writer.close()
    rows = metrics_lib.read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert rows[-1]["train/loss"] == 30.0
