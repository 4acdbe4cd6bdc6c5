"""Held-out true reward of online-DPO-job workdirs side by side, paired by prompt.

    python experiments/compare_online_dpo.py offline=runs/sentiment_dpo online=runs/online_dpo \
        self=runs/self_rewarding [--out experiments/online_dpo_comparison.md]

Each workdir is a finished `job = "online_dpo"` run (configs/sentiment_dpo.py,
configs/online_dpo.py, configs/self_rewarding.py) judged on the same held-out openings with the
same sampling seed: its eval.jsonl (the last evaluated step) and samples.jsonl (the reference's
and the final policy's samples with their true rewards). One row per run: the final true
reward, the gain over the reference paired by prompt, the KL to the reference, and the
difference to the first run's final policy, paired by prompt (mean over prompts of the
per-prompt mean reward difference, 95% normal interval). The runs must share the reference's
samples (the same model, prompts and seed), which is checked.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def _jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _interval(x: np.ndarray) -> tuple[float, float, float]:
    half = 1.959964 * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def _per_prompt(rows: list[dict], key: str) -> np.ndarray:
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(r["prompt"], []).append(r[key])
    return np.array([np.mean(v) for v in groups.values()])


def compare(runs: dict[str, str]) -> str:
    names = list(runs)
    samples = {n: _jsonl(os.path.join(d, "samples.jsonl")) for n, d in runs.items()}
    last = {n: _jsonl(os.path.join(d, "eval.jsonl"))[-1] for n, d in runs.items()}
    first = samples[names[0]]
    for n in names[1:]:
        if ([(r["prompt"], r["reference"]) for r in samples[n]]
                != [(r["prompt"], r["reference"]) for r in first]):
            raise ValueError(f"{n}: its reference samples differ from {names[0]}'s; the runs "
                             "are not judged on the same held-out samples")
    base = _per_prompt(first, "trained_reward")
    lines = [f"| run | final step | true reward (95% CI) | gain over reference (95% CI) | KL "
             f"(nats) | minus {names[0]}, paired by prompt (95% CI) |",
             "|---|---|---|---|---|---|"]
    for n in names:
        e = last[n]
        diff = (_per_prompt(samples[n], "trained_reward") - base) if n != names[0] else None
        d = "-" if diff is None else "{:+.3f} ({:+.3f} to {:+.3f})".format(*_interval(diff))
        lines.append(
            f"| {n} | {e['step']} | {e['reward']:.3f} ({e['reward_ci95_low']:.3f} to "
            f"{e['reward_ci95_high']:.3f}) | {e['gain']:+.3f} ({e['gain_ci95_low']:+.3f} to "
            f"{e['gain_ci95_high']:+.3f}) | {e['kl']:.2f} ({e['kl_ci95_low']:.2f} to "
            f"{e['kl_ci95_high']:.2f}) | {d} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="NAME=WORKDIR, the first is the baseline")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    runs = dict(r.split("=", 1) for r in args.runs)
    table = compare(runs)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
