"""Reading a run's workdir: its metrics, its training checkpoints, the parameters they hold.

A workdir written by `train.run(config, workdir)` holds `metrics.jsonl` (one JSON row per logged
step: `step`, `train/...` and `eval/...` names), `checkpoints/<step>/` (orbax: the `state`
item, a `TrainState` of step, params, opt_state and rng, beside the data iterator position) and
`export/` (Hugging Face format, read with `models.load_pretrained` or `transformers`).

    rows = read_metrics("runs/dpo")                       # {step: {name: value}}
    steps, loss = metric_series("runs/dpo", "train/loss")
    step, model = restore_params("runs/dpo", like=models.load_pretrained("runs/dpo/export")[0])

Writing one: `export(model, tokenizer, workdir)` (the offline runner's and the RL loop's
export/, whole or not at all).
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from alignjax import models, sharding


def read_metrics(workdir: str) -> dict[int, dict[str, float]]:
    """The rows of `workdir/metrics.jsonl` by step, in step order.

    A resumed run may log a step twice, and a step's train and held-out metrics may come in
    separate rows: rows of one step are merged, later values winning.
    """
    rows: dict[int, dict[str, float]] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                step = int(row.pop("step"))
                rows[step] = {**rows.get(step, {}), **row}
    return dict(sorted(rows.items()))


def metric_series(workdir: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of metric `name` at the steps that logged it, e.g. "eval/dpo/loss".

    Raises:
      KeyError: no row has `name` (the message lists the names there are).
    """
    rows = read_metrics(workdir)
    points = [(step, row[name]) for step, row in rows.items() if name in row]
    if not points:
        names = sorted({k for row in rows.values() for k in row})
        raise KeyError(f"{workdir}/metrics.jsonl has no metric {name!r}; it has {names}")
    steps, values = zip(*points)
    return np.asarray(steps), np.asarray(values, np.float64)


def checkpoint_steps(workdir: str) -> list[int]:
    """The steps of the complete training checkpoints in `workdir/checkpoints`, ascending."""
    return sorted(ocp.utils.checkpoint_steps(os.path.abspath(os.path.join(workdir, "checkpoints"))))


def restore_params(workdir: str, like: nnx.Module, step: int | None = None
                   ) -> tuple[int, nnx.Module]:
    """A copy of `like` holding the parameters of a training checkpoint (default: the last).

    Args:
      workdir: the run directory.
      like: a model of the run's architecture (e.g. the exported model, or the one the run
        started from), or its abstract version (`nnx.eval_shape`); it is not modified.
      step: the checkpoint's step; None for the latest.

    Returns:
      (step, model): the checkpoint's step and a new model with its parameters.

    Raises:
      FileNotFoundError: there is no such checkpoint.
      ValueError: the checkpoint's parameters do not match `like` (names or shapes).
    """
    path = os.path.abspath(os.path.join(workdir, "checkpoints"))
    available = checkpoint_steps(workdir)
    if step is None and available:
        step = available[-1]
    if step not in available:
        raise FileNotFoundError(f"{path}: no checkpoint of step {step} (there are {available})")
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(os.path.join(path, str(step), "state"))
    # Restored without a target, the params are nested dicts of {"value": array} per variable.
    saved = {tuple(str(k.key) for k in p): v for p, v in
             jax.tree_util.tree_leaves_with_path(state["params"])}
    graphdef, params = nnx.split(like)
    flat = []
    for p, var in nnx.to_flat_state(params):
        key = (*(str(k) for k in p), "value")
        value = saved.pop(key, None)
        if value is None or value.shape != var.get_value().shape:
            raise ValueError(f"{path}/{step}: parameter {'/'.join(key[:-1])} is missing from the "
                             "checkpoint or has another shape than in `like`")
        flat.append((p, var.replace(jnp.asarray(value, var.get_value().dtype))))
    if saved:
        raise ValueError(f"{path}/{step}: parameters absent from `like`: "
                         f"{sorted('/'.join(k[:-1]) for k in saved)}")
    return step, nnx.merge(graphdef, nnx.from_flat_state(flat))


def export(model, tokenizer, workdir: str, mesh: jax.sharding.Mesh | None = None) -> str:
    """Writes `workdir/export` (Hugging Face format) whole or not at all (process 0).

    What an export killed half-way left behind (`export.tmp`, `.tmp-export-*`) is removed first.
    With several processes, pass the mesh: every process then joins in gathering the
    parameters, which process 0 writes.
    """
    out = os.path.join(workdir, "export")
    if mesh is not None and jax.process_count() > 1:
        graphdef, params = nnx.split(model)
        model = nnx.merge(graphdef, sharding.replicate(params, mesh))
    if jax.process_index() == 0:
        tmp = out + ".tmp"
        for leftover in [tmp, *glob.glob(os.path.join(workdir, ".tmp-export-*"))]:
            shutil.rmtree(leftover, ignore_errors=True)
        models.save_hf(model, tmp, tokenizer=tokenizer)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return out
