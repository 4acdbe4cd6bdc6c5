"""The experiment runner end to end on a tiny model: every config, outputs, bad input."""

import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import save_tiny_model

from alignjax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_CONFIGS = sorted(os.path.basename(p)[:-3]
                     for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                     if not p.endswith(("common.py", "__init__.py")))



def _module(file: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg", file)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, REPO)
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(REPO)
    return mod


def _load(path: str):
    file, _, arg = path.partition(":")
    mod = _module(file)
    return mod.get_config(arg) if arg else mod.get_config()


# Every objective configs/dpo.py accepts; its default (dpo) runs in test_every_config_runs.
DPO_FAMILY = _module(os.path.join(REPO, "configs", "dpo.py")).FAMILY


# configs of the offline runner (other jobs, e.g. sampling or online DPO, have their own tests)
CONFIGS = [n for n in ALL_CONFIGS
           if _load(os.path.join(REPO, "configs", f"{n}.py")).get("job", "train") == "train"]


def small(config, model_dir: str, steps: int = 2):
    """The same config on a tiny model, a few examples and `steps` steps."""
    config.model.path = model_dir
    config.steps = steps
    config.batch_size = config.eval_batch_size = 4
    config.log_every = config.eval_every = config.checkpoint_every = 1
    config.export = True
    if config.data.train != "embedded:quickstart":
        config.data.eval_size = 8
        config.data.train_size = 16
    return config


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_runs(name, tiny_model_dir, shared_data, tmp_path):
    config = small(_load(os.path.join(REPO, "configs", f"{name}.py")), tiny_model_dir)
    last = train.run(config, str(tmp_path))
    assert last["train/loss"] > 0
    assert any(k.startswith("eval/") for k in last)
    rows = read_metrics(str(tmp_path))
    assert [r["step"] for r in rows][-2:] == [1, 2]
    assert os.path.isfile(os.path.join(tmp_path, "export", "config.json"))
    assert glob.glob(os.path.join(tmp_path, "tensorboard", "events.out.tfevents.*"))
    assert os.listdir(os.path.join(tmp_path, "best"))  # the best parameters by the eval metric
    counts = json.loads((tmp_path / "data_counts.json").read_text())
    assert counts["train"]["tokenized"] > 0


@pytest.mark.parametrize("loss", [name for name in DPO_FAMILY if name != "dpo"])
def test_dpo_family_by_name(loss, tiny_model_dir, shared_data, tmp_path):
    config = small(_load(os.path.join(REPO, "configs", "dpo.py") + f":{loss}"), tiny_model_dir)
    last = train.run(config, str(tmp_path))
    assert last["train/loss"] > 0
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2]
    assert config.best_metric in last  # the config's best metric is one the objective logs


def test_bad_loss_keyword_fails_before_anything_loads(tmp_path):
    config = _load(os.path.join(REPO, "configs", "dpo.py") + ":robust_dpo")
    config.model.path = str(tmp_path / "no_model")
    config.data.train = str(tmp_path / "no_data.jsonl")
    config.loss.label_smoothing = 0.5  # robust DPO divides by 1 - 2 eps
    with pytest.raises(ValueError, match=r"config\.loss\.label_smoothing=0\.5: expected"):
        train.run(config, str(tmp_path / "run"))
    config.loss.label_smoothing = 0.1
    config.loss.betta = 0.2  # an unlocked config (notebooks) accepts it; the runner does not
    with pytest.raises(ValueError, match=r"config\.loss\.betta: .* takes only beta, label_smoo"):
        train.run(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing was read, written or loaded


def test_best_checkpoint_keeps_the_best_step(tiny_model_dir, shared_data, tmp_path):
    config = small(_load(os.path.join(REPO, "configs", "sft.py")), tiny_model_dir, steps=4)
    config.optim.learning_rate = 1e-2
    config.optim.warmup_steps = 0
    train.run(config, str(tmp_path))
    evals = {r["step"]: r["eval/sft/nll"] for r in read_metrics(str(tmp_path))
             if "eval/sft/nll" in r}
    best_step = min(evals, key=evals.get)
    assert sorted(int(d) for d in os.listdir(tmp_path / "best") if d.isdigit()) == [best_step]
    assert len([d for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]) == 2  # last N


def test_overlong_sequences_are_counted(tiny_model_dir, shared_data, tmp_path):
    config = small(_load(os.path.join(REPO, "configs", "rm.py")), tiny_model_dir, steps=1)
    config.data.max_length = 48
    config.data.max_prompt_length = 24
    config.data.buckets = (48,)
    train.run(config, str(tmp_path))
    counts = json.loads((tmp_path / "data_counts.json").read_text())["train"]
    assert counts["truncated_prompt"] > 0 and counts["truncated_response"] > 0
    config.data.truncation = "drop"
    config.data.max_length, config.data.buckets = 128, (128,)
    config.data.train_size, config.data.eval_size = 64, 32
    train.run(config, str(tmp_path / "drop"))
    counts = json.loads((tmp_path / "drop" / "data_counts.json").read_text())["train"]
    assert 0 < counts["dropped_too_long"] < 64
    assert counts["tokenized"] + counts["dropped_too_long"] == 64


def test_missing_data_file_names_the_key(tiny_model_dir, tmp_path):
    config = small(_load(os.path.join(REPO, "configs", "sft.py")), tiny_model_dir)
    config.data.train = str(tmp_path / "nowhere.jsonl")
    with pytest.raises(FileNotFoundError, match=r"config\.data\.train: .*nowhere\.jsonl"):
        train.run(config, str(tmp_path / "run"))


def test_tokenizer_model_mismatch(smollm2_tokenizer, tmp_path):
    model_dir = save_tiny_model(str(tmp_path / "model"), smollm2_tokenizer)
    # A model whose vocabulary is smaller than the tokenizer beside it.
    save_tiny_model(str(tmp_path / "small_vocab"), smollm2_tokenizer, vocab_size=256)
    config = small(_load(os.path.join(REPO, "configs", "quickstart.py")), model_dir)
    config.model.path = str(tmp_path / "small_vocab")
    with pytest.raises(ValueError, match=r"config\.model\.path: the tokenizer has 49152 tokens "
                                         r"but the model's vocabulary has 256"):
        train.run(config, str(tmp_path / "run"))


def test_unknown_config_key_fails():
    out = subprocess.run([sys.executable, "-m", "alignjax.main", "--config", "configs/sft.py",
                          "--workdir", "/nonexistent", "--config.optim.learnig_rate=1"],
                         check=False, capture_output=True, text=True, cwd=REPO)
    assert out.returncode != 0
    assert "learnig_rate" in out.stderr


def test_cached_reference_equals_live_reference(tiny_model_dir, shared_data, tmp_path):
    results = {}
    for cached in (True, False):
        config = small(_load(os.path.join(REPO, "configs", "dpo.py")), tiny_model_dir, steps=3)
        config.ref_cache = cached
        config.export = False
        config.optim.learning_rate, config.optim.warmup_steps = 1e-3, 0
        train.run(config, str(tmp_path / str(cached)))
        results[cached] = read_metrics(str(tmp_path / str(cached)))
    assert results[True][-1]["dpo/margin"] != 0  # the policy moved away from the reference
    for a, b in zip(results[True], results[False]):
        for k in a:
            if k != "train/tokens_per_s":
                np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_bfloat16_compute_keeps_float32_master_weights(tiny_model_dir, tmp_path):
    """The trained state's parameters (the checkpoint of the last step) stay float32 and move."""
    from flax import nnx

    from alignjax import checkpoint, models

    config = small(_load(os.path.join(REPO, "configs", "quickstart.py")), tiny_model_dir)
    config.model.dtype = "bfloat16"
    config.export = False
    last = train.run(config, str(tmp_path))
    assert np.isfinite(last["train/loss"]) and last["train/update_norm"] > 0
    initial, _ = models.load_pretrained(tiny_model_dir, dtype="bfloat16")
    _, initial_params = nnx.split(initial)
    trained = checkpoint.restore_params(str(tmp_path / "checkpoints"), initial_params)
    leaves = jax.tree.leaves(trained)
    assert leaves and all(x.dtype == np.float32 for x in leaves)
    moved = [float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))
             for a, b in zip(leaves, jax.tree.leaves(initial_params), strict=True)]
    assert max(moved) > 0  # trained, not the initial weights read back


def test_cached_reference_survives_dropped_examples(tiny_model_dir, shared_data, tmp_path):
    """Example ids are numbered before truncation drops examples; the cache is indexed by id."""
    results = {}
    for cached in (True, False):
        config = small(_load(os.path.join(REPO, "configs", "dpo.py")), tiny_model_dir, steps=2)
        config.data.truncation = "drop"
        config.data.max_length, config.data.buckets = 128, (128,)
        config.data.train_size = 24
        config.ref_cache = cached
        config.export = False
        train.run(config, str(tmp_path / str(cached)))
        counts = json.loads((tmp_path / str(cached) / "data_counts.json").read_text())
        assert counts["train"]["dropped_too_long"] > 0 and counts["eval"]["dropped_too_long"] > 0
        results[cached] = read_metrics(str(tmp_path / str(cached)))
    for a, b in zip(results[True], results[False], strict=True):
        for k in a:
            if k != "train/tokens_per_s":
                np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_reference_cache_is_saved_and_read_back(tiny_model_dir, shared_data, tmp_path):
    """The reference pass is saved in the workdir and read instead of recomputed (a resumed
    run does not repeat it), only when the data and the model are the ones it came from."""
    from alignjax import evaluate

    def run(workdir):
        config = small(_load(os.path.join(REPO, "configs", "dpo.py")), tiny_model_dir, steps=1)
        config.export = False
        train.run(config, str(workdir))
        return read_metrics(str(workdir))[0]

    first = run(tmp_path / "a")
    saved = np.load(tmp_path / "a" / "reference_cache" / "train.npz")
    assert saved["known"].sum() == 16 and {"value/ref_chosen_logps", "value/ref_rejected_logps"} \
        <= set(saved.files)
    # the same cache with the chosen reference log-probs shifted by +5: read, not recomputed
    os.makedirs(tmp_path / "b" / "reference_cache")
    for name in ("train", "eval"):
        z = dict(np.load(tmp_path / "a" / "reference_cache" / f"{name}.npz"))
        z["value/ref_chosen_logps"] = z["value/ref_chosen_logps"] + 5.0
        np.savez(tmp_path / "b" / "reference_cache" / f"{name}.npz", **z)
    second = run(tmp_path / "b")
    beta = 0.1
    np.testing.assert_allclose(second["dpo/chosen_reward"], first["dpo/chosen_reward"] - beta * 5,
                               rtol=1e-4)
    np.testing.assert_allclose(second["dpo/rejected_reward"], first["dpo/rejected_reward"],
                               rtol=1e-5)
    # from other inputs (another fingerprint), the file is ignored
    path = str(tmp_path / "a" / "reference_cache" / "train.npz")
    assert evaluate._load_cache(path, str(saved["fingerprint"])) is not None
    assert evaluate._load_cache(path, "another-fingerprint") is None


def test_final_step_is_saved_and_a_finished_run_is_not_retrained(tiny_model_dir, shared_data,
                                                                   tmp_path, capsys):
    config = small(_load(os.path.join(REPO, "configs", "sft.py")), tiny_model_dir, steps=3)
    config.checkpoint_every = 2  # 3 is not a multiple
    config.keep_checkpoints = 5  # nothing deleted: step 1 must never have been saved
    config.export = False
    first = train.run(config, str(tmp_path))
    capsys.readouterr()
    assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [2, 3]
    rows = read_metrics(str(tmp_path))
    again = train.run(config, str(tmp_path))
    out = capsys.readouterr()
    assert "nothing to do" in out.out + out.err
    assert read_metrics(str(tmp_path)) == rows  # no step trained or logged twice
    assert again == first


def test_evaluation_runs_when_eval_every_is_not_a_multiple_of_log_every(
        tiny_model_dir, shared_data, tmp_path):
    config = small(_load(os.path.join(REPO, "configs", "sft.py")), tiny_model_dir, steps=6)
    config.log_every, config.eval_every = 2, 3
    config.eval_at_start = False
    config.export = False
    train.run(config, str(tmp_path))
    rows = read_metrics(str(tmp_path))
    assert [r["step"] for r in rows if "eval/sft/nll" in r] == [3, 6]
    assert [r["step"] for r in rows if "train/loss" in r] == [2, 4, 6]
    assert sorted(int(d) for d in os.listdir(tmp_path / "best") if d.isdigit())


@pytest.mark.parametrize("name", [pytest.param("sft", marks=pytest.mark.slow), "dpo"])
def test_held_out_metrics_are_exact_over_a_short_last_batch(name, tiny_model_dir, shared_data,
                                                            tmp_path):
    """6 held-out examples in batches of 4 (4 + 2) score exactly as one batch of 6."""
    results = {}
    for eval_batch in (4, 6):
        config = small(_load(os.path.join(REPO, "configs", f"{name}.py")), tiny_model_dir,
                       steps=1)
        config.data.eval_size, config.eval_batch_size = 6, eval_batch
        config.export = False
        results[eval_batch] = train.run(config, str(tmp_path / str(eval_batch)))
    evals = [k for k in results[6] if k.startswith("eval/")]
    assert evals
    for k in evals:
        np.testing.assert_allclose(results[4][k], results[6][k], rtol=1e-5, atol=1e-6, err_msg=k)
