"""SIGKILL at every stage of a run, then the same command again: nothing is lost or doubled.

One DPO run (reference cache, evaluations, checkpoints, export) is killed in turn during the
reference-cache pass, inside a training step, while a checkpoint is being written, during an
evaluation and during the export; once, the newest checkpoint is also corrupted before the
restart. The kill points are found from outside, as an operator would see them: the progress
bars on stderr, the rows of metrics.jsonl, orbax's temporary checkpoint directory and the
export's temporary directory. After each restart the run resumes from the newest complete
checkpoint (so at most the work since it is lost), and at the end metrics.jsonl holds every
step once, equal to an uninterrupted run's, and the exports are equal tensor for tensor.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12


def _pairs(path: str) -> str:
    with open(path, "w") as f:
        for i in range(24):
            f.write(json.dumps({"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.",
                                "rejected": f"Maybe {i}."}) + "\n")
    return path


def _command(model_dir: str, data: str, workdir: str) -> list[str]:
    return [sys.executable, "-m", "alignjax.main", "--config", "configs/dpo.py",
            "--workdir", workdir, f"--config.model.path={model_dir}",
            f"--config.data.train={data}", "--config.data.format=preference",
            "--config.data.eval_size=8", "--config.data.train_size=0",
            "--config.data.max_length=64", "--config.data.max_prompt_length=32",
            "--config.data.buckets=(64,)", f"--config.steps={STEPS}", "--config.batch_size=4",
            "--config.eval_batch_size=4", "--config.log_every=1", "--config.eval_every=4",
            "--config.checkpoint_every=2", "--config.keep_checkpoints=2",
            "--config.optim.learning_rate=1e-3", "--config.export=True"]


def _complete_checkpoints(workdir: str) -> list[int]:
    path = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def _metric_rows(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def _read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def _kill_when(cmd, workdir: str, log: str, seen) -> list[int]:
    """Runs `cmd`, SIGKILLs it once `seen(workdir, stderr)` holds; the complete checkpoints
    it left (listed after it died)."""
    with open(log + ".out", "w") as out, open(log + ".err", "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + 600
        try:
            while time.time() < deadline and proc.poll() is None:
                if seen(workdir, _read(log + ".err")):
                    break
                time.sleep(0.005)
            assert proc.poll() is None, f"{log}: the run ended before the kill point"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return _complete_checkpoints(workdir)


def _resumed_step(log: str) -> int | None:
    found = re.findall(r"resumed from step (\d+)", _read(log + ".out"))
    return int(found[-1]) if found else None


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "train/tokens_per_s"} for r in rows]


@pytest.mark.slow
def test_sigkill_at_every_stage_then_resume_matches_uninterrupted(tiny_model_dir, tmp_path):
    data = _pairs(str(tmp_path / "pairs.jsonl"))
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    subprocess.run(_command(tiny_model_dir, data, straight), cwd=REPO, check=True,
                   capture_output=True)
    cmd = _command(tiny_model_dir, data, killed)
    logs = str(tmp_path / "log")

    def in_reference_pass(workdir, err):
        return "reference:" in err

    def inside_a_step(workdir, err):
        return len(_metric_rows(workdir)) >= 3  # step 3 is logged; step 4 is being computed

    def writing_a_checkpoint(workdir, err):  # with two complete ones to fall back on
        path = os.path.join(workdir, "checkpoints")
        return (os.path.isdir(path) and any("tmp" in d for d in os.listdir(path))
                and len(_complete_checkpoints(workdir)) >= 2)

    mark = {}

    def during_evaluation(workdir, err):
        # an evaluation after training started (not the one at step 0): a new "eval" bar
        if "start" not in mark and _metric_rows(workdir):
            mark["start"] = len(err)
        return "start" in mark and "eval:" in err[mark["start"]:]

    def during_export(workdir, err):
        return any(d.startswith((".tmp-export-", "export.tmp")) for d in os.listdir(workdir))

    # Each restart resumes from the newest complete checkpoint the killed run left.
    left = _kill_when(cmd, killed, logs + "1", in_reference_pass)
    assert left == []  # nothing is saved before training
    for n, kill_point in ((2, inside_a_step), (3, writing_a_checkpoint)):
        before, left = left, _kill_when(cmd, killed, logs + str(n), kill_point)
        assert _resumed_step(logs + str(n)) == (before[-1] if before else None)
    assert len(left) == 2
    # the newest checkpoint is corrupted: the next run names it and falls back to the other
    newest = os.path.join(killed, "checkpoints", str(left[-1]))
    files = [os.path.join(r, f) for r, _, fs in os.walk(newest) for f in fs]
    big = max(files, key=os.path.getsize)
    raw = bytearray(open(big, "rb").read())
    raw[len(raw) // 2:len(raw) // 2 + 32] = bytes(b ^ 0xFF for b in raw[len(raw) // 2:][:32])
    open(big, "wb").write(bytes(raw))
    before, left = left, _kill_when(cmd, killed, logs + "4", during_evaluation)
    out = _read(logs + "4.out")
    assert newest in out and "falling back" in out
    assert _resumed_step(logs + "4") == before[0]
    before, left = left, _kill_when(cmd, killed, logs + "5", during_export)
    assert _resumed_step(logs + "5") == (before[-1] if before else None)
    assert left[-1] == STEPS
    # the last restart: nothing to train, the export is written again
    final = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    assert "nothing to do" in final.stdout + final.stderr

    rows_a, rows_b = _strip(_metric_rows(straight)), _strip(_metric_rows(killed))
    steps_b = [r["step"] for r in rows_b]
    assert steps_b == sorted(set(steps_b)) == list(range(1, STEPS + 1))  # none twice or missing
    assert rows_a == rows_b  # exactly equal, not approximately
    a = load_file(os.path.join(straight, "export", "model.safetensors"))
    b = load_file(os.path.join(killed, "export", "model.safetensors"))
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert not [d for d in os.listdir(killed) if "tmp" in d]  # no half-written export left
