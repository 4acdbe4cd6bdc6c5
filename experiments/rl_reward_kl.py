"""Reward against KL to the reference: RL runs and best-of-N on the same held-out prompts.

    python experiments/rl_reward_kl.py --best-of-n runs/best_of_n runs/ppo runs/grpo runs/rloo \
        --out experiments/rl_reward_kl.png

Each RL workdir (`alignjax.rl.loop`, job "rl") holds samples/eval_<step>.jsonl: every held-out
response of the evaluations at step 0 and at the last iteration, with its VADER reward (and,
from the runs that record it, its summed k1 KL to the reference). The best-of-N workdir
(`configs/best_of_n.py`) holds selected.jsonl (the selected response of each prompt for every N)
and best_of_n.jsonl (analytic and empirical KL per N).

Only the prompts the best-of-N run judged are used for every curve, so the points compare the
same prompts. Printed, per RL run: reward before and after on those prompts (95% interval over
prompts), the gain paired by prompt (after minus before, 95% interval), and the KL after
(per-row KL on those prompts where recorded, else the run's KL over all its held-out prompts).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
from collections import defaultdict

import numpy as np

from alignjax.rl.generation import mean_interval as _interval
from alignjax.rl.generation import read_jsonl as _rows


def _by_prompt(rows: list[dict], key: str, prompts: list[str]) -> np.ndarray:
    """Mean of `key` per prompt, in the order of `prompts`."""
    groups = defaultdict(list)
    for r in rows:
        groups[r["prompt"]].append(r[key])
    missing = [p for p in prompts if p not in groups]
    if missing:
        raise ValueError(f"{len(missing)} of the best-of-N prompts are not in the RL run's "
                         f"held-out samples (first: {missing[0]!r}); evaluate the RL run on "
                         "at least as many held-out prompts (config.eval_prompts)")
    return np.array([np.mean(groups[p]) for p in prompts])


def best_of_n(workdir: str) -> tuple[list[str], list[dict]]:
    """(the judged prompts in order, one row per N with reward interval and KLs)."""
    selected = _rows(os.path.join(workdir, "selected.jsonl"))
    prompts = list(dict.fromkeys(r["prompt"] for r in selected))
    return prompts, _rows(os.path.join(workdir, "best_of_n.jsonl"))


def rl_run(workdir: str, prompts: list[str]) -> dict:
    """Reward per step on `prompts`, the paired gain of the last step, KL per step."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    evals = {e["step"]: e for e in _rows(os.path.join(workdir, "eval.jsonl"))}
    files = glob.glob(os.path.join(workdir, "samples", "eval_*.jsonl"))
    steps = sorted(int(re.search(r"eval_(\d+)\.jsonl$", p).group(1)) for p in files)
    points = []
    for step in steps:
        rows = _rows(os.path.join(workdir, "samples", f"eval_{step}.jsonl"))
        reward_P = _by_prompt(rows, "reward", prompts)
        if all("kl" in r for r in rows):
            kl = _interval(_by_prompt(rows, "kl", prompts))
        else:
            e = evals[step]
            kl = (e["eval/kl"], e["eval/kl_ci95_low"], e["eval/kl_ci95_high"])
        points.append({"step": step, "reward_P": reward_P, "reward": _interval(reward_P),
                       "kl": kl})
    gain = _interval(points[-1]["reward_P"] - points[0]["reward_P"])
    return {"name": config["objective"], "workdir": workdir, "points": points, "gain": gain,
            "iterations": steps[-1]}


def _fmt(t, digits=3) -> str:
    return f"{t[0]:.{digits}f} ({t[1]:.{digits}f} to {t[2]:.{digits}f})"


def table(runs: list[dict], bon: list[dict], num_prompts: int) -> str:
    lines = [f"Held-out prompts: {num_prompts} (those of the best-of-N run)\n",
             "| method | iterations | reward before (95% CI) | reward after (95% CI) "
             "| gain, paired by prompt (95% CI) | KL to reference after (nats) |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        first, last = r["points"][0], r["points"][-1]
        lines.append(f"| {r['name']} | {r['iterations']} | {_fmt(first['reward'])} | "
                     f"{_fmt(last['reward'])} | {r['gain'][0]:+.3f} ({r['gain'][1]:+.3f} to "
                     f"{r['gain'][2]:+.3f}) | {_fmt(last['kl'], 2)} |")
    for b in bon:
        lines.append(f"| best-of-{b['n']} | - | - | {b['reward']:.3f} ({b['reward_ci95_low']:.3f}"
                     f" to {b['reward_ci95_high']:.3f}) | - | {b['analytic_kl']:.2f} "
                     "(analytic) |")
    return "\n".join(lines)


def plot(runs: list[dict], bon: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    kl = [b["analytic_kl"] for b in bon]
    reward = np.array([b["reward"] for b in bon])
    err = np.array([reward - [b["reward_ci95_low"] for b in bon],
                    [b["reward_ci95_high"] for b in bon] - reward])
    ax.errorbar(kl, reward, yerr=err, marker="o", color="0.4", capsize=3,
                label="best-of-N (analytic KL)")
    for b, x, y in zip(bon, kl, reward, strict=True):
        ax.annotate(f"N={b['n']}", (x, y), textcoords="offset points", xytext=(4, -12),
                    fontsize=7, color="0.4")
    for r in runs:
        xs = [p["kl"][0] for p in r["points"]]
        ys = np.array([p["reward"][0] for p in r["points"]])
        yerr = np.array([ys - [p["reward"][1] for p in r["points"]],
                         [p["reward"][2] for p in r["points"]] - ys])
        xerr = np.array([np.array(xs) - [p["kl"][1] for p in r["points"]],
                         [p["kl"][2] for p in r["points"]] - np.array(xs)])
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="s", capsize=3,
                    label=f"{r['name']} (steps {', '.join(str(p['step']) for p in r['points'])})")
    ax.set_xlabel("KL to the reference (nats per response)")
    ax.set_ylabel("held-out VADER reward")
    ax.set_title("SmolLM2-135M-Instruct, movie-review openings")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--best-of-n", required=True, help="workdir of configs/best_of_n.py")
    parser.add_argument("runs", nargs="+", help="workdirs of RL runs (job 'rl')")
    parser.add_argument("--out", default="rl_reward_kl.png", help="PNG to write")
    args = parser.parse_args()
    prompts, bon = best_of_n(args.best_of_n)
    runs = [rl_run(w, prompts) for w in args.runs]
    print(table(runs, bon, len(prompts)))
    plot(runs, bon, args.out)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
