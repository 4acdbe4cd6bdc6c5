"""Metrics of a run: exact merging, host-side values, and the writer (JSONL + TensorBoard).

Names follow `alignjax.losses.common`: a masked mean `name` comes with `name/sum` and
`name/count`, so merges recompute it exactly; every other metric is a plain mean over the rows
of the batch it was computed on, so merges weight it by that batch's row count.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping

import jax
import numpy as np

_PARTS = ("/sum", "/count")


def merge_weighted(results: Iterable[tuple[Mapping[str, float], int]]) -> dict[str, float]:
    """Exact metrics over several batches of possibly different sizes.

    Args:
      results: (metrics of one batch, number of real rows in that batch) pairs.

    Returns:
      `name/sum` and `name/count` summed and `name` recomputed from them; every other metric
      averaged with the row counts as weights. The whole held-out set is then scored as if it
      were one batch.
    """
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for metrics, rows in results:
        for name, value in metrics.items():
            value = float(np.asarray(value))
            if name.endswith(_PARTS):
                sums[name] = sums.get(name, 0.0) + value
            else:
                sums[name] = sums.get(name, 0.0) + value * rows
                weights[name] = weights.get(name, 0.0) + rows
    merged = {}
    for name, total in sums.items():
        if name.endswith(_PARTS):
            merged[name] = total
        elif f"{name}/sum" in sums and f"{name}/count" in sums:
            merged[name] = sums[f"{name}/sum"] / max(sums[f"{name}/count"], 1.0)
        else:
            merged[name] = total / max(weights[name], 1.0)
    return merged


def to_host(metrics: Mapping[str, jax.Array]) -> dict[str, float]:
    """Python floats of the reported metrics (the `/sum` and `/count` parts left out)."""
    return {k: float(v) for k, v in jax.device_get(dict(metrics)).items()
            if not k.endswith(_PARTS)}


def read_metrics(workdir: str) -> list[dict[str, float]]:
    """The rows of `workdir/metrics.jsonl` in order (empty if there is none)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Writer:
    """Appends metrics to `metrics.jsonl` and TensorBoard events; process 0 writes, others not.

    Args:
      workdir: the run directory.
      resume_step: the step the run resumes from. Rows logged after it (by a run that was killed
        before its next checkpoint) are removed, since the resumed run logs those steps again:
        `metrics.jsonl` never holds a step twice.
    """

    def __init__(self, workdir: str, resume_step: int = 0):
        self.active = jax.process_index() == 0
        if not self.active:
            return
        from tensorboardX import SummaryWriter

        path = os.path.join(workdir, "metrics.jsonl")
        kept = [r for r in read_metrics(workdir) if r["step"] <= resume_step]
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, path)
        self.jsonl = open(path, "a")  # noqa: SIM115 (closed in close())
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.active:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)
        self.tb.flush()

    def close(self) -> None:
        if self.active:
            self.jsonl.close()
            self.tb.close()
