"""Plots a run's metrics.jsonl: one panel per metric, train and held-out curves together.

    python experiments/plot_run.py runs/rm --metrics rm/accuracy,rm/loss --out experiments/rm.png

For each metric name m, the panel shows `m` (train, every log step) and `eval/m` (held-out,
every eval step) against the step. Rows repeated by a resumed run keep their last value.
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def load(workdir: str) -> dict[int, dict]:
    rows = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            rows[r["step"]] = {**rows.get(r["step"], {}), **r}
    return dict(sorted(rows.items()))


def plot(workdir: str, metrics: list[str], out: str, title: str | None = None) -> None:
    rows = load(workdir)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for key, style, label in ((m, "-", "train (one batch)"), (f"eval/{m}", "o-", "held-out")):
            pts = [(s, r[key]) for s, r in rows.items() if key in r]
            if pts:
                ax.plot(*zip(*pts), style, label=label, alpha=0.6 if key == m else 1.0)
                lo, hi = f"eval/{m}_ci95_low", f"eval/{m}_ci95_high"
                band = [(s, r[lo], r[hi]) for s, r in rows.items() if lo in r]
                if key != m and band:
                    s, low, high = zip(*band)
                    ax.errorbar(s, [(a + b) / 2 for a, b in zip(low, high)],
                                yerr=[(b - a) / 2 for a, b in zip(low, high)], fmt="none",
                                ecolor="k", capsize=4, label="95% interval")
        ax.set_title(m)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir")
    p.add_argument("--metrics", required=True, help="comma-separated metric names")
    p.add_argument("--out", required=True)
    p.add_argument("--title")
    args = p.parse_args()
    plot(args.workdir, args.metrics.split(","), args.out, args.title)


if __name__ == "__main__":
    main()
