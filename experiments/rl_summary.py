"""A table of RL runs: held-out reward before and after (95% interval), KL, phase times.

    python experiments/rl_summary.py runs/ppo runs/grpo runs/rloo

Reads each workdir's eval.jsonl (held-out reward and KL to the reference at step 0 and at the
last iteration, `alignjax.rl.loop.evaluate`) and metrics.jsonl (per-iteration wall time of each
phase, training reward and KL), and prints one markdown table of results and one of times.
"""

from __future__ import annotations

import json
import os
import sys

PHASES = ("sampling", "scoring", "reference_forward", "policy_forward", "critic_forward",
          "updates", "iteration")


def _rows(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summary(workdir: str) -> tuple[str, str]:
    evals = _rows(os.path.join(workdir, "eval.jsonl"))
    metrics = [r for r in _rows(os.path.join(workdir, "metrics.jsonl")) if r["step"] > 0]
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    first, last = evals[0], evals[-1]

    def reward(e):
        return (f"{e['eval/reward']:.3f} ({e['eval/reward_ci95_low']:.3f} to "
                f"{e['eval/reward_ci95_high']:.3f})")

    result = (f"| {config['objective']} | {len(metrics)} | {reward(first)} | {reward(last)} | "
              f"{last['eval/kl']:.2f} ({last['eval/kl_ci95_low']:.2f} to "
              f"{last['eval/kl_ci95_high']:.2f}) | "
              f"{metrics[-1]['rl/kl_k1']:.2f} / {metrics[-1]['rl/kl_k3']:.2f} |")
    # the first iteration compiles the train steps; the later ones show the steady state
    lines = []
    for label, rows in (("first (compiles)", metrics[:1]), ("later, mean", metrics[1:])):
        if rows:
            times = [sum(r[f"time/{p}"] for r in rows) / len(rows) for p in PHASES]
            lines.append(f"| {config['objective']} | {label} ({len(rows)}) | "
                         + " | ".join(f"{t:.1f}" for t in times) + " |")
    return result, "\n".join(lines)


def main(workdirs: list[str]) -> None:
    results, timings = zip(*(summary(w) for w in workdirs), strict=True)
    print("| algorithm | iterations | held-out reward before (95% CI) | after (95% CI) "
          "| held-out KL to reference after, nats/response (95% CI) "
          "| last training batch KL k1 / k3 |")
    print("|---|---|---|---|---|---|")
    print("\n".join(results))
    print("\nWall time per iteration (s):\n")
    print("| algorithm | iterations | " + " | ".join(PHASES) + " |")
    print("|---|---|" + "---|" * len(PHASES))
    print("\n".join(timings))


if __name__ == "__main__":
    main(sys.argv[1:])
