"""A run killed with SIGKILL and restarted ends exactly where an uninterrupted run does."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 30


def command(model_dir: str, workdir: str) -> list[str]:
    return [sys.executable, "-m", "alignjax.main", "--config", "configs/quickstart.py",
            "--workdir", workdir, f"--config.model.path={model_dir}",
            f"--config.steps={STEPS}", "--config.log_every=1", "--config.eval_every=10",
            "--config.checkpoint_every=1", "--config.keep_checkpoints=2",
            "--config.export=False"]


def final_metrics(workdir: str) -> dict[int, dict]:
    """The last record of each step (a killed run logs a few steps twice), timing removed."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            r.pop("train/tokens_per_s", None)
            out[r["step"]] = r
    return out


@pytest.mark.slow  # three runs in subprocesses, SIGKILL mid-run: about 2 min on two cores
def test_sigkill_then_resume_matches_uninterrupted(tiny_model_dir, tmp_path):
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    subprocess.run(command(tiny_model_dir, straight), cwd=REPO, check=True,
                   capture_output=True)

    proc = subprocess.Popen(command(tiny_model_dir, killed), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = os.path.join(killed, "metrics.jsonl")
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and len(Path(metrics).read_text().splitlines()) >= 13:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    logged = max(final_metrics(killed))
    assert 12 <= logged < STEPS, f"killed at step {logged}: not mid-training"

    resumed = subprocess.run(command(tiny_model_dir, killed), cwd=REPO, check=True,
                             capture_output=True, text=True)
    assert "resumed from step" in resumed.stdout + resumed.stderr
    a, b = final_metrics(straight), final_metrics(killed)
    assert sorted(a) == sorted(b) == list(range(STEPS + 1))
    for step in a:
        assert a[step] == b[step], step  # exactly equal, not approximately


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
