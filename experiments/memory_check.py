"""Planned against measured peak memory of short SmolLM2-135M runs on this machine (CPU).

    python experiments/memory_check.py [sft|dpo ...] [--out experiments/memory_check.json]

For each config: the plan job (`--config.job=plan`, one simulated device) and then the same
config trained for 2 steps, one process at a time; the measured number is the training
process's peak resident memory (`ru_maxrss` of that child alone, from `os.wait4`). On one CPU
device the device memory is the process's memory, so the plan's total (which then includes the
process baseline) is compared with the peak RSS.

The runs are shortened (2 steps, 16 training and 8 held-out examples, no evaluation at the
start, no export) but keep the configs' batch (8 x 128 tokens) and model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from alignjax.memory import process_rss_bytes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = ["--config.steps=2", "--config.data.train_size=16", "--config.data.eval_size=8",
         "--config.eval_at_start=False", "--config.export=False", "--config.log_every=1",
         "--config.eval_every=2", "--config.checkpoint_every=2"]


# Phases of a training run, each starting where its text first appears in the output.
PHASES = (("start", ""), ("data read", "data: "), ("reference pass", "reference (train)"),
          ("training steps", "/2 ["), ("held-out evaluation", "eval: "))


def _child(args: list[str]) -> tuple[int, float, str, dict[str, float]]:
    """(peak RSS bytes, seconds, output, peak RSS GB per phase) of `python -m alignjax.main
    args` (raises on failure). The RSS is polled every 0.2 s from /proc; a phase runs from the
    first appearance of its text in the output (PHASES) to the next phase's."""
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    t0 = time.time()
    with tempfile.NamedTemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "alignjax.main", *args], cwd=REPO,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        phase, peaks = 0, {PHASES[0][0]: 0.0}
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            with open(log.name) as f:
                text = f.read()
            later = [j for j in range(phase + 1, len(PHASES)) if PHASES[j][1] in text]
            if later:  # phases a config does not have (no reference pass) are skipped
                phase = later[-1]
                peaks.setdefault(PHASES[phase][0], 0.0)
            name = PHASES[phase][0]
            peaks[name] = max(peaks[name], process_rss_bytes(proc.pid) / 1e9)
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        out = log.read()
    if proc.returncode:
        raise RuntimeError(f"alignjax.main {' '.join(args)} exited {proc.returncode}:\n"
                           f"{out[-3000:]}")
    return usage.ru_maxrss * 1024, time.time() - t0, out, peaks


def check(name: str, root: str) -> dict:
    config = ["--config", f"configs/{name}.py", *SHORT]
    plan_dir = os.path.join(root, f"plan_{name}")
    _, plan_s, plan_out, _ = _child([*config, "--workdir", plan_dir, "--config.job=plan"])
    with open(os.path.join(plan_dir, "memory_plan.json")) as f:
        plan = json.load(f)
    start = plan_out.index("memory plan:")
    print(plan_out[start:plan_out.index("\n{", start)], flush=True)
    peak, train_s, _, phases = _child([*config, "--workdir", os.path.join(root, f"train_{name}")])
    row = {"config": name, "planned_gb": plan["total"] / 1e9, "measured_peak_rss_gb": peak / 1e9,
           "planned_over_measured": plan["total"] / peak, "plan_s": plan_s, "train_s": train_s,
           "terms_gb": {k: v / 1e9 for k, v in plan["terms"].items()},
           "peak_rss_gb_by_phase": phases}
    print(f"{name}: planned {row['planned_gb']:.3f} GB, measured peak RSS "
          f"{row['measured_peak_rss_gb']:.3f} GB, planned/measured "
          f"{row['planned_over_measured']:.3f} (plan {plan_s:.0f} s, train {train_s:.0f} s)",
          flush=True)
    print("  peak RSS by phase (GB): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()),
          flush=True)
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("configs", nargs="*", default=["sft", "dpo"])
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        rows = [check(name, root) for name in args.configs]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
