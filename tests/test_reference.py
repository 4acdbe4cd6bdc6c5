"""A reference that moves during DPO (TR-DPO, sDPO): the update, the schedule, the cache, resume."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import REPO, _load, read_metrics, small

from alignjax import evaluate, metrics, reference, train


def test_soft_update_matches_float64_numpy():
    rng = np.random.default_rng(0)
    ref = {"a": rng.normal(size=(4, 3)).astype(np.float32),
           "b": {"c": rng.normal(size=(5,)).astype(np.float32)}}
    pol = jax.tree.map(lambda x: (x + rng.normal(size=x.shape)).astype(np.float32), ref)
    for alpha in (0.6, 0.1, 1.0):
        out = reference.make_update("soft", alpha, None)(
            jax.tree.map(jnp.asarray, ref), jax.tree.map(jnp.asarray, pol))
        want = jax.tree.map(lambda r, p, a=alpha: a * p.astype(np.float64)
                            + (1 - a) * r.astype(np.float64), ref, pol)
        for o, w in zip(jax.tree.leaves(out), jax.tree.leaves(want), strict=True):
            assert o.dtype == np.float32
            np.testing.assert_allclose(np.asarray(o, np.float64), w, rtol=0, atol=1e-6)
    # alpha = 1 and the hard update give the policy exactly, in buffers of their own
    policy = jax.tree.map(jnp.asarray, pol)
    hard = reference.make_update("hard", 0.6, None)(jax.tree.map(jnp.asarray, ref), policy)
    jax.tree.map(lambda x: x.delete(), policy)  # as the next train step donates it
    for h, p in zip(jax.tree.leaves(hard), jax.tree.leaves(pol), strict=True):
        np.testing.assert_array_equal(np.asarray(h), p)


def _config(**changes):
    config = _load(os.path.join(REPO, "configs", "dpo.py"))
    config.steps = changes.pop("steps", 10)
    for key, value in changes.items():
        section, name = key.split("__")
        config[section][name] = value
    return config


def test_segments_and_stages():
    def spans(config):
        return [(s.begin, s.end, s.stage) for s in reference.segments(config)]

    assert spans(_config()) == [(0, 10, 0)]
    assert spans(_config(reference__sync="soft", reference__tau=4)) == [
        (0, 4, 0), (4, 8, 0), (8, 10, 0)]
    assert spans(_config(steps=6, data__stages=3)) == [(0, 2, 0), (2, 4, 1), (4, 6, 2)]
    assert [len(p) for p in reference.stage_examples(list(range(10)), 3)] == [3, 3, 4]
    assert sum(reference.stage_examples(list(range(10)), 3), []) == list(range(10))
    for bad, match in (({"reference__sync": "slow"}, r"config\.reference\.sync"),
                       ({"reference__sync": "soft", "reference__alpha": 0.0},
                        r"config\.reference\.alpha"),
                       ({"reference__sync": "hard", "reference__tau": 0},
                        r"config\.reference\.tau"),
                       ({"steps": 10, "data__stages": 3}, r"config\.data\.stages=3"),
                       ({"data__stages": 2, "reference__sync": "soft"}, r"must then be")):
        with pytest.raises(ValueError, match=match):
            reference.check(_config(**bad), has_reference=True)
    with pytest.raises(ValueError, match="no reference model"):
        reference.check(_config(data__stages=2), has_reference=False)


def _moving(model_dir, *, cached: bool, **changes):
    config = small(_config(**changes), model_dir, steps=changes.get("steps", 4))
    config.ref_cache = cached
    config.export = False
    config.optim.learning_rate, config.optim.warmup_steps = 1e-3, 0
    config.eval_every = 0  # held out at the last step only: against the moved reference
    return config


def _by_step(workdir) -> dict[int, dict]:
    out = {}
    for r in read_metrics(str(workdir)):
        r.pop("train/tokens_per_s", None)
        out.setdefault(r["step"], {}).update(r)
    return out


@pytest.mark.parametrize("changes", [
    pytest.param({"reference__sync": "hard", "reference__tau": 2}, marks=pytest.mark.slow),
    {"data__stages": 2},
], ids=["trdpo_hard", "sdpo"])
def test_cache_is_recomputed_exactly_when_the_reference_moves(
        changes, tiny_model_dir, shared_data, tmp_path, monkeypatch):
    """After a hard update (or a new sDPO stage) the policy is the reference: the next step's
    DPO loss is log 2 and its margin 0, with the cached values as with the live reference;
    the train cache is computed once per reference (steps 0 and 2), never in between."""
    passes = []
    real = evaluate.reference_cache

    def counted(*args, **kwargs):
        passes.append((kwargs["desc"], kwargs["key"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "reference_cache", counted)
    rows = {}
    for cached in (True, False):
        train.run(_moving(tiny_model_dir, cached=cached, **changes), str(tmp_path / str(cached)))
        rows[cached] = _by_step(tmp_path / str(cached))
    train_keys = [k for d, k in passes if d == "reference (train)"]
    assert len(train_keys) == 2 and train_keys[0] != train_keys[1]
    for cached in (True, False):
        step2, step3 = rows[cached][2], rows[cached][3]
        assert abs(step2["dpo/margin"]) > 1e-3  # the policy had moved from the reference ...
        np.testing.assert_allclose(step3["train/loss"], np.log(2), atol=1e-5)  # ... then not
        np.testing.assert_allclose(step3["dpo/margin"], 0, atol=1e-5)
    for step, a in rows[True].items():
        for k, v in a.items():
            np.testing.assert_allclose(v, rows[False][step][k], rtol=1e-5, atol=1e-6,
                                       err_msg=f"step {step} {k}")


@pytest.mark.slow
def test_soft_update_run_cached_equals_live(tiny_model_dir, shared_data, tmp_path):
    rows = {}
    for cached in (True, False):
        config = _moving(tiny_model_dir, cached=cached, steps=4, reference__sync="soft",
                         reference__tau=2, reference__alpha=0.5)
        train.run(config, str(tmp_path / str(cached)))
        rows[cached] = _by_step(tmp_path / str(cached))
    # a soft update leaves the reference half-way: the margin after the update is not 0
    assert abs(rows[True][3]["dpo/margin"]) > 1e-4
    for step, a in rows[True].items():
        for k, v in a.items():
            np.testing.assert_allclose(v, rows[False][step][k], rtol=1e-5, atol=1e-6,
                                       err_msg=f"step {step} {k}")
    saved = sorted(os.listdir(tmp_path / "True" / "reference"))
    assert saved == ["2"]


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_stopped_runs_resume_with_the_same_reference(tiny_model_dir, shared_data, tmp_path,
                                                     monkeypatch):
    """Stopped right after the checkpoint of a boundary (before its reference is saved), and
    inside a later segment: the resumed run logs exactly what an uninterrupted one does."""
    def config():
        return _moving(tiny_model_dir, cached=True, steps=6, reference__sync="soft",
                       reference__tau=3)

    train.run(config(), str(tmp_path / "straight"))
    real_save, real_write = reference.save, metrics.Writer.write

    def save_fails(workdir, step, params):
        raise _Stop(step)

    monkeypatch.setattr(reference, "save", save_fails)
    with pytest.raises(_Stop):
        train.run(config(), str(tmp_path / "stopped"))
    monkeypatch.setattr(reference, "save", real_save)

    def write_fails(self, step, values):
        if step == 5:
            raise _Stop(step)
        return real_write(self, step, values)

    monkeypatch.setattr(metrics.Writer, "write", write_fails)
    with pytest.raises(_Stop):
        train.run(config(), str(tmp_path / "stopped"))
    monkeypatch.setattr(metrics.Writer, "write", real_write)
    train.run(config(), str(tmp_path / "stopped"))
    a, b = _by_step(tmp_path / "straight"), _by_step(tmp_path / "stopped")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert a[step] == b[step], step  # exactly equal
    assert json.loads((tmp_path / "stopped" / "config.json").read_text())["reference"][
        "sync"] == "soft"
