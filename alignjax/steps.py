"""The one generic train step: value_and_grad of an objective, an optax update, norms.

Every algorithm (SFT, reward model, the DPO family, Aligner) is an `Objective` plugged into the
same pure function; `make_train_step` jits it once with explicit shardings and donated state, and
traces it under the mesh and the logical axis rules.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from alignjax import sharding
from alignjax.losses import merge_metrics

Batch = dict[str, jax.Array]


@struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree."""

    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
    rng: jax.Array


@dataclasses.dataclass(frozen=True)
class Objective:
    """What the generic step minimises, and what it needs from the runner.

    Attributes:
      loss: `loss(model, batch, frozen, rng, total) -> (loss, metrics)`. It divides its
        micro-batch sum by `total`, so micro-batch losses and gradients add up to exactly those
        of the whole batch. Metrics follow `alignjax.losses.common` (masked means carry `/sum`
        and `/count`; every other metric must be a plain mean over this micro-batch's rows).
      count: `count(batch) -> total`, the normaliser of the whole (accumulated) batch (trained
        tokens for SFT, pairs for DPO).
      inputs: the batch layout the runner builds: "sft" (token sequences; pair data gives its
        chosen side), "pair", "unpaired" or "correction" (`alignjax.data` kinds), or "rollout"
        (`alignjax.rl.rollout`: sampled responses with their rollout quantities).
      head: the model the runner builds: "lm" (language model) or "scalar" (a scalar head per
        token: reward and value models).
      reference: None, or `reference(model, batch) -> {name: [B] array}`: the reference
        model's quantities that `loss` reads from the batch under those names. The runner
        either computes them once per example before training (`config.ref_cache`) and adds
        them to each batch, or passes the frozen reference model as `frozen` and `loss` calls
        `reference(frozen.model(), batch)` itself.
      prepare: None, or `prepare(model, batch, frozen) -> {name: array}`: statistics of the
        whole batch (KTO's reference point), computed without gradient before the batch is
        split into micro-batches and added to it (each array with a leading axis of size B).
    """

    loss: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
    count: Callable[[Batch], jax.Array]
    inputs: str = "sft"
    head: str = "lm"
    reference: Callable[[Any, Batch], dict[str, jax.Array]] | None = None
    prepare: Callable[[Any, Batch, Any], dict[str, jax.Array]] | None = None


def init_state(params: nnx.State, tx: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key(seed))


def train_step(state: TrainState, batch: Batch, frozen: Any, *, graphdef: nnx.GraphDef,
               objective: Objective, tx: optax.GradientTransformation,
               micro_batches: int = 1) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on `batch`, accumulated over `micro_batches` equal slices.

    When the loss or the gradient norm is not finite the update is not applied (metric
    `train/nonfinite` is 1): the returned state holds the old parameters and optimiser state.

    Args:
      state: the donated training state.
      batch: arrays with a leading batch axis, divisible by `micro_batches`.
      frozen: models or arrays that do not train (reference model, cached log-probs); never
        donated.
      graphdef: the model structure (static).
      objective: what to minimise.
      tx: the optax transformation (schedule, clipping, weight decay inside).
      micro_batches: gradient accumulation steps inside this step.
    """
    rng = jax.random.fold_in(state.rng, state.step)
    total = objective.count(batch)
    if objective.prepare is not None:
        extra = objective.prepare(nnx.merge(graphdef, state.params), batch, frozen)
        batch = {**batch, **jax.tree.map(jax.lax.stop_gradient, extra)}

    def grads_of(mb, key):
        def loss_fn(params):
            return objective.loss(nnx.merge(graphdef, params), mb, frozen, key, total)

        return jax.value_and_grad(loss_fn, has_aux=True)(state.params)

    if micro_batches == 1:
        (loss, metrics), grads = grads_of(batch, rng)
    else:
        split = jax.tree.map(
            lambda x: x.reshape(micro_batches, x.shape[0] // micro_batches, *x.shape[1:]), batch)

        def body(acc, xs):
            mb, i = xs
            (loss, metrics), grads = grads_of(mb, jax.random.fold_in(rng, i))
            return jax.tree.map(jnp.add, acc, (loss, grads)), metrics

        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
        (loss, grads), stacked = jax.lax.scan(body, zeros, (split, jnp.arange(micro_batches)))
        metrics = merge_metrics(stacked)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    # A non-finite loss or gradient is never applied: parameters and optimiser state stay as
    # they were (the step count still advances with the data); `train/nonfinite` tells the loop.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                     (params, opt_state), (state.params, state.opt_state))
    metrics = {**metrics, "train/loss": loss, "train/grad_norm": grad_norm,
               "train/param_norm": optax.tree.norm(params),
               "train/update_norm": optax.tree.norm(updates),
               "train/nonfinite": 1.0 - finite.astype(jnp.float32)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_metrics(params: nnx.State, batch: Batch, frozen: Any, *, graphdef: nnx.GraphDef,
                 objective: Objective) -> dict[str, jax.Array]:
    """The objective's metrics on `batch` (no gradient, no update): held-out evaluation."""
    model = nnx.merge(graphdef, params)
    if objective.prepare is not None:
        batch = {**batch, **objective.prepare(model, batch, frozen)}
    return objective.loss(model, batch, frozen, jax.random.key(0), objective.count(batch))[1]


def make_train_step(graphdef: nnx.GraphDef, objective: Objective,
                    tx: optax.GradientTransformation, *, state_sharding: Any, batch_sharding: Any,
                    frozen_sharding: Any, micro_batches: int = 1,
                    mesh: jax.sharding.Mesh | None = None,
                    rules: sharding.Rules = sharding.DEFAULT_RULES) -> Callable[..., Any]:
    """`train_step` jitted once, with explicit in/out shardings and the state donated.

    The returned `step(state, batch, frozen) -> (state, metrics)` traces and runs under
    `sharding.use(mesh, rules)`, so the model's activation constraints take effect; so does its
    `step.lower(state, batch, frozen)`.

    Args:
      graphdef: the model structure.
      objective: what to minimise.
      tx: the optax transformation.
      state_sharding: shardings of the `TrainState` (`sharding.state_shardings`).
      batch_sharding: shardings of the batch arrays (one for all, or a dict).
      frozen_sharding: shardings of `frozen` (None when there is nothing frozen).
      micro_batches: gradient accumulation steps inside the step.
      mesh: the mesh to trace under; by default the mesh of `state_sharding`.
      rules: the logical axis rules of the activations.
    """
    step = functools.partial(train_step, graphdef=graphdef, objective=objective, tx=tx,
                             micro_batches=micro_batches)
    jitted = jax.jit(step, in_shardings=(state_sharding, batch_sharding, frozen_sharding),
                     out_shardings=(state_sharding, None), donate_argnums=(0,))
    return sharding.under(mesh if mesh is not None else sharding.mesh_of(state_sharding), jitted,
                          rules)


def optimizer(*, learning_rate: float, warmup_steps: int, total_steps: int,
              schedule: str = "cosine", weight_decay: float = 0.0, grad_clip: float = 1.0,
              b1: float = 0.9, b2: float = 0.95) -> optax.GradientTransformation:
    """AdamW with global-norm clipping and a warmup + cosine/linear/constant schedule."""
    decay_steps = max(total_steps - warmup_steps, 1)
    if schedule == "cosine":
        decay = optax.cosine_decay_schedule(learning_rate, decay_steps)
    elif schedule == "linear":
        decay = optax.linear_schedule(learning_rate, 0.0, decay_steps)
    elif schedule == "constant":
        decay = optax.constant_schedule(learning_rate)
    else:
        raise ValueError(f"config.optim.schedule={schedule!r}: expected cosine, linear or constant")
    warmup = optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1))
    lr = optax.join_schedules([warmup, decay], [warmup_steps])
    return optax.chain(optax.clip_by_global_norm(grad_clip),
                       optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay))
