"""Training checkpoints (orbax): the last N states with the data position, and the best params.

    workdir/checkpoints/<step>/   the train state (all of it) and the data iterator's state
    workdir/best/<step>/          the parameters with the best `best_metric` so far

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a run
killed while saving never leaves a checkpoint that a restart would read. Orbax does not check
what it reads back, so every training checkpoint also holds `checksums` (two 32-bit sums of the
bits of every array, `fingerprint`) that `restore` compares with the arrays it read: a
truncated or corrupted checkpoint is detected, named, moved to `workdir/corrupt_checkpoints/`
and the previous one is restored instead (and the run says so). A failed write (a full disk)
raises `CheckpointWriteError` naming the step and the directory; the checkpoints before it stay
as they were. Every process calls every method: orbax coordinates multi-host writes and
restores.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from alignjax import sharding


def _brief(e: BaseException) -> str:
    """The type and message of `e`, cut in the middle when long (the OS error is at its end)."""
    text = str(e)
    text = text if len(text) <= 600 else f"{text[:250]} ... {text[-350:]}"
    return f"{type(e).__name__}: {text}"


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (e.g. the disk is full); the message names step and place."""


class CorruptCheckpointError(ValueError):
    """A checkpoint cannot be read back as it was written; the message names its directory."""


@jax.jit
def _sums(x: jax.Array) -> jax.Array:
    """[2] uint32: the plain and the position-weighted sum (mod 2^32) of the bits of `x`."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    if x.dtype.itemsize == 8:  # only with jax_enable_x64
        x = jax.lax.bitcast_convert_type(x, jnp.uint32)
    bits = jax.lax.bitcast_convert_type(
        x, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]).astype(jnp.uint32)
    bits = bits.reshape(-1)
    weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + 1
    return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weights, dtype=jnp.uint32)])


def fingerprint(tree: Any) -> dict[str, list[int]]:
    """{leaf path: [sum, weighted sum]} of the bits of every array of `tree` (JSON-serialisable).

    A flipped, lost or moved byte changes the sums; equal trees give equal fingerprints.
    """
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    # the sums are replicated: this process's first shard holds them (also with several hosts)
    sums = [np.asarray(_sums(x).addressable_data(0)) for _, x in leaves]
    return {jax.tree_util.keystr(p): [int(v) for v in s] for (p, _), s in zip(leaves, sums)}


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
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.corrupt_directory = os.path.abspath(os.path.join(workdir, "corrupt_checkpoints"))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                                 cleanup_tmp_directories=True))
        self.every = every
        self.pending: int | None = None  # the step of a save that may still be writing
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
        """(state, data iterator state) of checkpoint `step` (default the latest good one), or None.

        Without `step`, a checkpoint that cannot be read or whose arrays do not match their
        checksums is reported, moved to `corrupt_checkpoints/` and the one before it is tried.

        Args:
          state: a state of the right structure and shardings (arrays or ShapeDtypeStructs);
            the restored arrays take its shardings.
          step: a checkpoint to restore (no fallback).

        Raises:
          CorruptCheckpointError naming the checkpoint directory when `step` (or, without it,
          every checkpoint) is unreadable.
        """
        if step is not None:
            return self._restore_checked(state, step)
        errors = []
        for candidate in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self._restore_checked(state, candidate)
            except CorruptCheckpointError as e:
                errors.append(str(e))
                self._set_aside(candidate)
                tqdm.write(f"{e}\n  moved to {self.corrupt_directory}; falling back to the "
                           "checkpoint before it")
                continue
            if errors:
                tqdm.write(f"restored the previous good checkpoint, step {candidate}")
            return restored
        if errors:
            raise CorruptCheckpointError("no readable checkpoint:\n" + "\n".join(errors))
        return None

    def _restore_checked(self, state: Any, step: int) -> tuple[Any, Any]:
        where = os.path.join(self.directory, str(step))
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        items = {"state": ocp.args.StandardRestore(abstract), "data": ocp.args.JsonRestore()}
        checked = os.path.isdir(os.path.join(where, "checksums"))
        if checked:
            items["checksums"] = ocp.args.JsonRestore()
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # orbax and tensorstore raise many types on damaged files
            raise CorruptCheckpointError(f"{where}: cannot read the checkpoint "
                                         f"(truncated or corrupt?): {_brief(e)}") from e
        if checked:
            saved, found = restored.checksums, fingerprint(restored.state)
            bad = sorted(k for k in set(saved) | set(found) if saved.get(k) != found.get(k))
            if bad:
                raise CorruptCheckpointError(
                    f"{where}/state: {len(bad)} array(s) differ from the checksums saved with "
                    f"them (corrupt files?): {bad[:4]}{' ...' if len(bad) > 4 else ''}")
        return restored.state, restored.data

    def _set_aside(self, step: int) -> None:
        """Moves checkpoint `step` out of the way (to `corrupt_checkpoints/<step>-<time>`)."""
        if jax.process_index() == 0:
            os.makedirs(self.corrupt_directory, exist_ok=True)
            shutil.move(os.path.join(self.directory, str(step)),
                        os.path.join(self.corrupt_directory, f"{step}-{int(time.time())}"))
        sharding.barrier(f"checkpoint {step} set aside")
        self.manager.reload()

    def save(self, step: int, state: Any, data_state: Any, *, force: bool = False) -> bool:
        """Saves at `step` if it is a save step (or `force`); True if a save was started.

        Raises:
          CheckpointWriteError naming the step and directory when this write, or the previous
          one still finishing in the background, fails.
        """
        # not orbax's should_save, which also saves the first step a manager sees
        if not (force or step % self.every == 0):
            return False
        self._check_pending()
        try:
            started = self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                checksums=ocp.args.JsonSave(fingerprint(state))), force=True)
        except Exception as e:
            raise self._write_error(step, e) from e
        self.pending = step
        return started

    def _write_error(self, step: int, e: BaseException) -> CheckpointWriteError:
        good = self.manager.all_steps()
        return CheckpointWriteError(
            f"writing checkpoint step {step} to {self.directory} failed: "
            f"{_brief(e)}; the complete checkpoints are steps "
            f"{sorted(good)}")

    def _check_pending(self) -> None:
        """Waits for the background write of the last save; raises if it failed."""
        step, self.pending = self.pending, None
        if step is None:
            return
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as e:
            raise self._write_error(step, e) from e

    def save_best(self, step: int, params: Any, metrics: Mapping[str, float]) -> None:
        """Keeps `params` in best/ if `metrics[best_metric]` is the best seen so far."""
        if self.best is None or self.best_metric not in metrics:
            return
        self.best.save(step, args=ocp.args.StandardSave(params),
                       metrics={self.best_metric: metrics[self.best_metric]})

    def close(self) -> None:
        """Waits for every pending write, then releases the managers.

        Raises:
          CheckpointWriteError if the last write failed (the managers are released first).
        """
        try:
            self._check_pending()
        finally:
            for m in (self.manager, self.best):
                if m is not None:
                    m.wait_until_finished()
                    m.close()


def save_state(directory: str, state: Any) -> None:
    """Writes `state` (any tree of arrays) to `directory` and waits until it is complete.

    Read it back with `orbax.checkpoint.StandardCheckpointer().restore(directory)`.
    """
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.abspath(directory), state, force=True)
        checkpointer.wait_until_finished()


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
