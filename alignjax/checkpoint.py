"""Training checkpoints (orbax): the last N states with the data position, and the best params.

    workdir/checkpoints/<step>/   the train state (all of it) and the data iterator's state
    workdir/best/<step>/          the parameters with the best `best_metric` so far

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a run
killed while saving never leaves a checkpoint that a restart would read. Every process calls
every method: orbax coordinates multi-host writes and restores.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """The last `keep` states every `every` steps (the final step always), and the best params.

    Args:
      workdir: the run directory.
      keep: how many recent states to keep.
      every: save every this many steps (and always when `save(..., force=True)`).
      best_metric: the metric that selects `best/` ("" for none).
      best_mode: "min" or "max".
    """

    def __init__(self, workdir: str, *, keep: int, every: int, best_metric: str = "",
                 best_mode: str = "min"):
        if best_mode not in ("min", "max"):
            raise ValueError(f"config.best_mode={best_mode!r}: expected 'min' or 'max'")
        self.manager = ocp.CheckpointManager(
            os.path.abspath(os.path.join(workdir, "checkpoints")),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every))
        self.best_metric = best_metric
        self.best = None
        if best_metric:
            sign = 1.0 if best_mode == "min" else -1.0
            self.best = ocp.CheckpointManager(
                os.path.abspath(os.path.join(workdir, "best")),
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1, best_fn=lambda m: sign * m[best_metric], best_mode="min"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, state: Any, step: int | None = None) -> tuple[Any, Any] | None:
        """(state, data iterator state) of checkpoint `step` (default the latest), or None.

        Args:
          state: a state of the right structure and shardings (arrays or ShapeDtypeStructs);
            the restored arrays take its shardings.
        """
        step = self.manager.latest_step() if step is None else step
        if step is None:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
        return restored.state, restored.data

    def save(self, step: int, state: Any, data_state: Any, *, force: bool = False) -> bool:
        """Saves at `step` if it is a save step (or `force`); True if a save was started."""
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=force)

    def save_best(self, step: int, params: Any, metrics: Mapping[str, float]) -> None:
        """Keeps `params` in best/ if `metrics[best_metric]` is the best seen so far."""
        if self.best is None or self.best_metric not in metrics:
            return
        self.best.save(step, args=ocp.args.StandardSave(params),
                       metrics={self.best_metric: metrics[self.best_metric]})

    def close(self) -> None:
        """Waits for every pending write, then releases the managers."""
        for m in (self.manager, self.best):
            if m is not None:
                m.wait_until_finished()
                m.close()


def restore_params(directory: str, abstract_params: Any, step: int | None = None) -> Any:
    """Parameters from a run's `checkpoints/` (the `params` of the state) or `best/` directory.

    Args:
      directory: `workdir/checkpoints` or `workdir/best`.
      abstract_params: the parameters' structure (e.g. `nnx.split(model)[1]`), with shardings.
      step: the checkpoint step (default the latest).
    """
    with ocp.CheckpointManager(os.path.abspath(directory)) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory}: no checkpoint")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_params)
        if os.path.basename(os.path.normpath(directory)) == "best":
            return manager.restore(step, args=ocp.args.StandardRestore(abstract))
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(partial_restore=True,
                                         item={"params": abstract})))
        return restored.state["params"]
