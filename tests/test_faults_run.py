"""Faults met by a whole run on a tiny model: non-finite steps, bad config, bad data rows,
paths that try to leave the workdir."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import load_file, save_file
from test_train import _load, small

from alignjax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "configs", "quickstart.py")

POISON = "Xylophonic quagmire"  # its tokens appear in one training row only
ROWS = [{"prompt": f"What is {i} + {i}?", "response": f"Answer: {2 * i}. (end)"}
        for i in range(9)]
ROWS[4] = {"prompt": f"Say {POISON}.", "response": "Answer: no. (end)"}


def _write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def _poisoned_model(tiny_model_dir: str, out: str, tokenizer) -> list[int]:
    """A copy of the tiny model whose input embeddings of the poison's own tokens are NaN."""
    shutil.copytree(tiny_model_dir, out)
    others = set()
    for r in ROWS[:4] + ROWS[5:]:
        others |= set(tokenizer(r["prompt"] + r["response"])["input_ids"])
    ids = sorted(set(tokenizer(f"Say {POISON}.")["input_ids"]) - others)
    assert ids
    file = os.path.join(out, "model.safetensors")
    tensors = load_file(file)
    tensors["model.embed_tokens.weight"][ids] = np.nan
    save_file(tensors, file, metadata={"format": "pt"})
    return ids


def _config(model_dir: str, data: str, steps: int, on_nonfinite: str):
    config = small(_load(QUICKSTART), model_dir, steps=steps)
    config.data.train, config.data.eval_size = data, 1  # the last row is held out
    config.export, config.eval_every, config.eval_at_start = False, 100, False
    config.on_nonfinite = on_nonfinite
    config.optim.learning_rate, config.optim.warmup_steps = 1e-3, 0
    return config


def _rows(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_nonfinite_step_is_not_applied_saved_and_stops_or_skips(tiny_model_dir, smollm2_tokenizer,
                                                                tmp_path, capsys):
    model_dir = str(tmp_path / "model")
    _poisoned_model(tiny_model_dir, model_dir, smollm2_tokenizer)
    data = _write_jsonl(tmp_path / "rows.jsonl", ROWS)
    workdir = str(tmp_path / "run")
    # 8 training rows in batches of 4: the poisoned row is in one batch of each epoch
    with pytest.raises(FloatingPointError) as e:
        train.run(_config(model_dir, data, 4, "stop"), workdir)
    message = str(e.value)
    step = int(re.search(r"^step (\d+): the loss or the gradients are not finite", message)[1])
    assert step in (1, 2)
    assert f"{data}:5" in message and "config.on_nonfinite='stop'" in message
    where = os.path.join(workdir, "nonfinite", str(step))
    batch = np.load(os.path.join(where, "batch.npz"))
    assert 4 in batch["example_id"].tolist()  # the poisoned example (index 4, line 5)
    assert [r["step"] for r in _rows(workdir)] == list(range(1, step))

    # The saved state holds the parameters from before the step: the update was not applied.
    with ocp.StandardCheckpointer() as c:
        saved = c.restore(os.path.abspath(os.path.join(where, "state")))
    if step == 1:
        before = load_file(os.path.join(model_dir, "model.safetensors"))
        embed = next(np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(saved["params"])
                     if "embed_tokens" in jax.tree_util.keystr(p))
        np.testing.assert_array_equal(embed, before["model.embed_tokens.weight"])
    else:
        with ocp.StandardCheckpointer() as c:
            previous = c.restore(os.path.join(workdir, "checkpoints", str(step - 1), "state"))
        for a, b in zip(jax_leaves(saved["params"]), jax_leaves(previous["params"]), strict=True):
            np.testing.assert_array_equal(a, b)
    assert int(saved["step"]) == step

    # The same workdir with "skip": resumes, skips both poisoned batches, trains the others.
    capsys.readouterr()
    last = train.run(_config(model_dir, data, 4, "skip"), workdir)
    out = capsys.readouterr().out
    rows = _rows(workdir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    skipped = [r["step"] for r in rows if r["train/nonfinite"] == 1.0]
    assert len(skipped) == 2 and skipped[0] == step and skipped[1] in (3, 4)
    assert out.count("Skipped (config.on_nonfinite='skip')") == 2
    applied = [r for r in rows if r["step"] not in skipped]
    assert all(np.isfinite(r["train/loss"]) and r["train/update_norm"] > 0 for r in applied)
    assert np.isfinite(last["eval/sft/nll"])


def jax_leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("key, value, message", [
    ("micro_batches", 3, r"config\.batch_size=4 is not divisible by config\.micro_batches=3"),
    ("mesh", {"data": 2, "fsdp": 1, "tensor": 1}, r"config\.mesh: .* needs 2 devices, found 1"),
    ("steps", 0, r"config\.steps=0: must be at least 1"),
    ("on_nonfinite", "ignore", r"config\.on_nonfinite='ignore': expected one of"),
    ("data.buckets", ("64",), r"config\.data\.buckets=\('64',\): expected positive integer"),
    ("data.max_prompt_length", 64, r"config\.data\.max_prompt_length=64: must be below"),
    ("optim.learning_rate", float("nan"), r"config\.optim\.learning_rate=nan: expected a pos"),
])
def test_config_faults_fail_before_anything_is_read(tmp_path, key, value, message):
    config = _load(QUICKSTART)
    config.model.path = str(tmp_path / "no_model")  # never reached
    config.data.train = str(tmp_path / "no_data.jsonl")
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises((ValueError, TypeError), match=message):
        train.run(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing written, read or computed


# Values every run must refuse, written out here independently of `train.check_config`.
REFUSED = {
    **{k: (-1, 0) for k in ("steps", "batch_size", "eval_batch_size", "micro_batches",
                            "log_every", "checkpoint_every", "keep_checkpoints")},
    **{k: (-1,) for k in ("seed", "eval_every", "data.eval_size", "data.train_size",
                          "data.holdout_seed", "data.max_prompt_length", "optim.warmup_steps")},
    "data.max_length": (1, 0, -1),
    **{k: ("bogus", "") for k in ("on_nonfinite", "best_mode", "data.on_malformed",
                                  "data.on_empty", "data.truncation", "data.holdout",
                                  "data.format", "optim.schedule", "model.dtype",
                                  "model.param_dtype", "model.remat")},
    "data.buckets": ((0,), ("64",), (64, -1)),
    "optim.learning_rate": (0.0, -1e-3, float("nan"), float("inf")),
    "optim.grad_clip": (0.0, -1.0, float("nan")),
    "optim.weight_decay": (-0.1, float("nan")),
    **{f"mesh.{axis}": (0, -2) for axis in ("data", "fsdp", "tensor")},
}


def _set(config, key: str, value) -> None:
    *parents, leaf = key.split(".")
    for p in parents:
        config = config[p]
    config[leaf] = value


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_every_refused_value_is_named_before_any_compute(key):
    one = jax.devices()[:1]
    for value in REFUSED[key]:
        config = _load(QUICKSTART)
        _set(config, key, value)
        with pytest.raises((ValueError, TypeError), match=re.escape(f"config.{key}=")):
            train.check_config(config, one)
    train.check_config(_load(QUICKSTART), one)  # the unchanged config passes


_TWO_DEVICES = """
import sys
from alignjax import train
sys.path.insert(0, "tests")
from test_train import _load
for batch, micro in ((3, 1), (4, 4)):
    config = _load("configs/quickstart.py")
    config.model.path = "/nonexistent"
    config.mesh = {"data": 2, "fsdp": 1, "tensor": 1}
    config.batch_size, config.micro_batches = batch, micro
    try:
        train.run(config, "/nonexistent/run")
    except ValueError as e:
        print(e)
"""


def test_batch_that_the_data_axis_does_not_divide_fails_first(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    out = subprocess.run([sys.executable, "-c", _TWO_DEVICES], cwd=REPO, env=env, check=True,
                         capture_output=True, text=True, timeout=300).stdout.splitlines()
    assert out[0].startswith("config.batch_size=3: each of the config.micro_batches=1 micro-batches"
                             " (3 rows) must split evenly over the 2 batch shards")
    assert out[1].startswith("config.batch_size=4: each of the config.micro_batches=4 micro-batches"
                             " (1 rows) must split evenly over the 2 batch shards")


def _snapshot(root: str, skip: str) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _, files in os.walk(root):
        if os.path.abspath(dirpath).startswith(os.path.abspath(skip)):
            continue
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


def test_bad_rows_are_counted_and_the_run_writes_only_in_its_workdir(tiny_model_dir, tmp_path,
                                                                     capsys):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    long_row = {"prompt": "Repeat: " + "la " * 400, "response": "Answer: la. (end)"}
    train_rows = [json.dumps(r) for r in ROWS[:4] + ROWS[5:]]
    train_rows[2:2] = ['{"prompt": "unterminated', json.dumps({"prompt": "q", "response": ""}),
                       json.dumps(long_row), json.dumps({"prompt": "q", "response": 7})]
    (data_dir / "train.jsonl").write_text("\n".join(train_rows) + "\n")
    (data_dir / "eval.jsonl").write_bytes(json.dumps(ROWS[0]).encode() + b"\n\xff\xfe\n"
                                          + json.dumps(ROWS[1]).encode() + b"\n")
    model_dir = str(tmp_path / "model")
    shutil.copytree(tiny_model_dir, model_dir)
    config = small(_load(QUICKSTART), model_dir, steps=2)
    config.data.train = "../data/train.jsonl"  # relative to the working directory below
    config.data.eval = str(data_dir / "eval.jsonl")
    config.data.on_malformed, config.data.on_empty = "skip", "drop"
    config.data.truncation = "drop"
    config.best_metric = "../../escaped"  # a metric name, never a path
    config.eval_at_start = False
    workdir = tmp_path / "work" / "run"
    (tmp_path / "work").mkdir()
    before = _snapshot(str(tmp_path), str(workdir))
    cwd = os.getcwd()
    os.chdir(tmp_path / "work")
    try:
        train.run(config, "run")
    finally:
        os.chdir(cwd)
    assert _snapshot(str(tmp_path), str(workdir)) == before  # nothing outside run/ changed
    assert os.path.isdir(workdir / "export") and os.path.isdir(workdir / "checkpoints")

    counts = json.loads((workdir / "data_counts.json").read_text())
    train_counts, eval_counts = counts["train"], counts["eval"]
    assert train_counts["rows"] == 12 and train_counts["malformed_skipped"] == 2
    assert train_counts["empty_response_dropped"] == 1 and train_counts["examples"] == 9
    assert train_counts["dropped_too_long"] == 1 and train_counts["tokenized"] == 8
    assert eval_counts["rows"] == 3 and eval_counts["malformed_skipped"] == 1
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line == f"data: {counts}"  # printed again at the end of the run
