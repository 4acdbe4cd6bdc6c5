"""A DPO reference model that moves during training: TR-DPO and sDPO as runner settings.

`alignjax.train.run` trains in segments of steps, each with one reference model:

- `config.reference.sync = "soft"`: every `config.reference.tau` steps the reference becomes
  `alpha * policy + (1 - alpha) * reference` (`config.reference.alpha`); "hard": it becomes
  the policy (TR-DPO, Gorbatovski et al. 2024). "none" (the default): it never moves.
- `config.data.stages = S > 1`: the training examples, in the order of `config.data.train`,
  are cut into S consecutive parts of (nearly) equal size, trained one after the other for
  `config.steps / S` steps each; at the start of every stage after the first the reference
  becomes the policy (sDPO, Kim et al. 2024). One optimiser (and learning-rate schedule) runs
  over all the stages.

Each moved reference is saved in `workdir/reference/<step>/` (orbax) before training goes on, so
that a resumed run continues with exactly the reference it had; with `config.ref_cache` the
reference log-probs are computed again for every new reference (their file's fingerprint holds
the reference's checksums, `alignjax.checkpoint.fingerprint`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

SYNCS = ("none", "soft", "hard")
KEEP = 3  # saved references: the newest few (a resume never goes back further)


@dataclasses.dataclass(frozen=True)
class Segment:
    """Steps [begin, end) trained against one reference, on the examples of `stage`."""

    begin: int
    end: int
    stage: int


def settings(config) -> tuple[str, float, int, int]:
    """(update, alpha, tau, stages) of `config`, with the defaults of a config that lacks them."""
    ref = config.get("reference", None)
    update = ref.sync if ref is not None else "none"
    alpha = ref.alpha if ref is not None else 1.0
    tau = ref.tau if ref is not None else 0
    return update, alpha, tau, config.data.get("stages", 1)


def moves(config) -> bool:
    """Whether the reference of `config` moves during training."""
    update, _, _, stages = settings(config)
    return update != "none" or stages > 1


def check(config, *, has_reference: bool) -> None:
    """Fails on reference settings the run cannot use, naming the config key."""
    update, alpha, tau, stages = settings(config)
    if update not in SYNCS:
        raise ValueError(f"config.reference.sync={update!r}: expected one of {SYNCS}")
    if not isinstance(stages, int) or isinstance(stages, bool) or stages < 1:
        raise ValueError(f"config.data.stages={stages!r}: expected a positive integer")
    if not isinstance(tau, int) or isinstance(tau, bool) or tau < 0:
        raise ValueError(f"config.reference.tau={tau!r}: expected an integer >= 0")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
        raise ValueError(f"config.reference.alpha={alpha!r}: expected a number in (0, 1]")
    if not (update != "none" or stages > 1):
        return
    if not has_reference:
        raise ValueError(f"config.objective={config.objective!r} has no reference model: "
                         "config.reference.sync must be 'none' and config.data.stages 1")
    if update != "none" and stages > 1:
        raise ValueError("config.data.stages > 1 moves the reference at every stage (sDPO); "
                         "config.reference.sync must then be 'none'")
    if update != "none" and tau < 1:
        raise ValueError(f"config.reference.tau={tau}: config.reference.sync={update!r} "
                         "needs the steps between updates (>= 1)")
    if config.steps % stages:
        raise ValueError(f"config.steps={config.steps} is not divisible by "
                         f"config.data.stages={stages}")


def segments(config) -> list[Segment]:
    """The run's segments, in order: one reference each."""
    update, _, tau, stages = settings(config)
    steps = config.steps
    if stages > 1:
        per = steps // stages
        return [Segment(k * per, (k + 1) * per, k) for k in range(stages)]
    if update == "none":
        return [Segment(0, steps, 0)]
    return [Segment(b, min(b + tau, steps), 0) for b in range(0, steps, tau)]


def stage_examples(examples: list, stages: int) -> list[list]:
    """`examples` cut into `stages` consecutive parts whose sizes differ by at most one."""
    n = len(examples)
    if n < stages:
        raise ValueError(f"config.data.stages={stages}: only {n} training examples")
    return [examples[k * n // stages:(k + 1) * n // stages] for k in range(stages)]


def soft_update(reference, policy, alpha: float):
    """`alpha * policy + (1 - alpha) * reference`, leaf by leaf, in each leaf's dtype."""
    return jax.tree.map(
        lambda r, p: (alpha * p.astype(jnp.float32) + (1.0 - alpha) * r.astype(jnp.float32)
                      ).astype(r.dtype), reference, policy)


def make_update(update: str, alpha: float, shardings):
    """`new(reference, policy) -> reference` as a jitted function: never aliases the policy,
    whose buffers the next train step donates."""
    if update == "hard":
        fn = lambda r, p: jax.tree.map(jnp.copy, p)  # noqa: E731
    else:
        fn = lambda r, p: soft_update(r, p, alpha)  # noqa: E731
    return jax.jit(fn, out_shardings=shardings)


def _directory(workdir: str, step: int) -> str:
    return os.path.abspath(os.path.join(workdir, "reference", str(step)))


def save(workdir: str, step: int, params) -> None:
    """Writes the reference in effect from `step` on (orbax, complete or not at all) and keeps
    only the newest `KEEP`."""
    where = _directory(workdir, step)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(where, params, force=True)
        checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        root = os.path.dirname(where)
        saved = sorted(int(d) for d in os.listdir(root) if d.isdigit())
        for old in saved[:-KEEP]:
            shutil.rmtree(os.path.join(root, str(old)), ignore_errors=True)


def restore(workdir: str, step: int, abstract):
    """The reference saved for `step` (with the shardings of `abstract`), or None."""
    where = _directory(workdir, step)
    if not os.path.isdir(where):
        return None
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(where, target)
