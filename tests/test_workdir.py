"""`alignjax.workdir`: metrics rows, checkpoint steps and restored parameters of a workdir."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from alignjax import models, steps, workdir


def test_metrics_rows_merge_by_step(tmp_path):
    rows = [{"step": 1, "train/loss": 0.7}, {"step": 2, "train/loss": 0.6},
            {"step": 2, "eval/dpo/loss": 0.65},  # a step's held-out row after its train row
            {"step": 2, "train/loss": 0.5}]  # a resumed run logs the step again
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert workdir.read_metrics(str(tmp_path)) == {
        1: {"train/loss": 0.7}, 2: {"train/loss": 0.5, "eval/dpo/loss": 0.65}}
    s, v = workdir.metric_series(str(tmp_path), "eval/dpo/loss")
    assert s.tolist() == [2] and v.tolist() == [0.65]
    with pytest.raises(KeyError, match=r"no metric 'eval/sft/nll'.*'train/loss'"):
        workdir.metric_series(str(tmp_path), "eval/sft/nll")


def _save_states(path, model, n):
    """Checkpoints as the runner writes them: the TrainState beside the data position."""
    tx = optax.sgd(1.0)
    state = steps.init_state(nnx.split(model)[1], tx, seed=0)
    with ocp.CheckpointManager(str(path)) as manager:
        for step in range(1, n + 1):
            state = state.replace(step=jnp.asarray(step),
                                  params=jax.tree.map(lambda x: x + 1.0, state.params))
            manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({"epoch": 0})))
    return state


def test_restore_params_gives_the_checkpointed_model(tmp_path):
    model = models.build(models.tiny_config("llama", vocab_size=64))
    last = _save_states(tmp_path / "checkpoints", model, 2)
    assert workdir.checkpoint_steps(str(tmp_path)) == [1, 2]
    assert workdir.checkpoint_steps(str(tmp_path / "nowhere")) == []
    ids = jnp.arange(12, dtype=jnp.int32)[None] % 64
    logits = nnx.jit(lambda m: m(ids, jnp.ones_like(ids)))  # one compilation for all of them
    before = np.asarray(logits(model))
    step, restored = workdir.restore_params(str(tmp_path), like=model)
    assert step == 2
    want = np.asarray(logits(nnx.merge(nnx.split(model)[0], last.params)))
    np.testing.assert_array_equal(np.asarray(logits(restored)), want)
    np.testing.assert_array_equal(np.asarray(logits(model)), before)  # `like` is unchanged
    assert not np.allclose(want, before)
    step, first = workdir.restore_params(str(tmp_path), like=model, step=1)
    assert step == 1 and not np.allclose(np.asarray(logits(first)), want)
    # An abstract model is enough to restore into (nothing materialised before the restore).
    _, from_abstract = workdir.restore_params(str(tmp_path), like=nnx.eval_shape(lambda: model))
    np.testing.assert_array_equal(np.asarray(logits(from_abstract)), want)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 3 \(there are \[1, 2\]\)"):
        workdir.restore_params(str(tmp_path), like=model, step=3)
    wider = nnx.eval_shape(
        lambda: models.build(models.tiny_config("llama", vocab_size=64, intermediate_size=256)))
    with pytest.raises(ValueError, match="another shape"):
        workdir.restore_params(str(tmp_path), like=wider)
