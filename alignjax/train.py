"""The offline runner: `run(config, workdir)` sets a run up, `fit(...)` is its training loop.

Workdir layout: config.json (resolved config), data_counts.json (rows read, dropped, truncated;
also printed at the start and at the end), metrics.jsonl and tensorboard/ (`alignjax.metrics`),
checkpoints/ and best/ (`alignjax.checkpoint`), export/ (Hugging Face format, at the end),
nonfinite/<step>/ (batch and state of a step whose loss or gradients were not finite).
Re-running the same command resumes from the last good checkpoint (parameters, optimiser, step,
RNG, data position); a finished run is not trained again.

The config is checked (`check_config`) before anything is read or computed. A step whose loss or
gradients are not finite is not applied (`steps.train_step`); the run then stops, or skips the
batch and goes on (`config.on_nonfinite`: "stop" or "skip"), naming the step and the batch's
examples either way.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from alignjax import checkpoint, models, objectives, sharding, steps
from alignjax import data as data_lib
from alignjax import evaluate as evaluate_lib
from alignjax import metrics as metrics_lib
from alignjax import reference as reference_lib
from alignjax.workdir import export


def _as_inputs(objective: steps.Objective, examples):
    """The examples in the layout the objective trains on (`Objective.inputs`)."""
    if objective.inputs == "sft":
        return data_lib.as_sft(examples)
    if objective.inputs == "unpaired":
        return data_lib.as_unpaired(examples)
    return examples


def _say(text: str) -> None:
    """A line on the console of process 0 (beside its progress bar)."""
    if sharding.is_main_process():
        tqdm.write(text)


def _write_json(workdir: str, name: str, obj) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, name), "w") as f:
            json.dump(obj, f, indent=2)


# Keys the runner checks before it reads or computes anything: integers with their least value,
# positive floats, booleans and choices.
_AT_LEAST = {"steps": 1, "batch_size": 1, "eval_batch_size": 1, "micro_batches": 1,
             "log_every": 1, "eval_every": 0, "checkpoint_every": 1, "keep_checkpoints": 1,
             "seed": 0, "data.max_length": 2, "data.max_prompt_length": 0, "data.eval_size": 0,
             "data.train_size": 0, "data.holdout_seed": 0, "optim.warmup_steps": 0}
_POSITIVE_FLOATS = ("optim.learning_rate", "optim.grad_clip")
_DTYPES = ("float32", "bfloat16", "float16")
_BOOLS = ("export", "eval_at_start", "ref_cache")
_CHOICES = {"on_nonfinite": ("stop", "skip"), "best_mode": ("min", "max"),
            "data.on_malformed": ("raise", "skip"), "data.on_empty": ("keep", "drop", "raise"),
            "data.holdout": ("last", "random"), "data.truncation": ("keep_end", "cut_response",
                                                                    "drop"),
            "optim.schedule": ("cosine", "linear", "constant"), "model.dtype": _DTYPES,
            "model.param_dtype": _DTYPES, "model.remat": ("none", "full", "dots")}


def _get(config, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def check_config(config: ml_collections.ConfigDict,
                 devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """Fails on settings the run cannot use, before anything is read or computed.

    Args:
      config: the run's config.
      devices: the devices of the mesh (default: all of them).

    Returns:
      The mesh of `config.mesh` over `devices`.

    Raises:
      ValueError / TypeError naming the `config.<key>` at fault: a count that is not an
      integer or too small, a rate that is not a positive number, an unknown choice, bucket
      lengths that are not positive integers, mesh sizes that are not -1 or positive or do not
      match the devices, a batch that the micro-batches or the mesh's batch shards (or the
      processes) do not divide.
    """
    for axis, size in config.mesh.items():
        if not isinstance(size, int) or isinstance(size, bool) or not (size == -1 or size >= 1):
            raise ValueError(f"config.mesh.{axis}={size!r}: expected -1 or a positive integer")
    mesh = sharding.make_mesh(**config.mesh, devices=devices)
    for key, least in _AT_LEAST.items():
        value = _get(config, key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"config.{key}={value!r}: expected an integer")
        if value < least:
            raise ValueError(f"config.{key}={value}: must be at least {least}")
    for key in _POSITIVE_FLOATS:
        value = _get(config, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                or value == float("inf"):
            raise ValueError(f"config.{key}={value!r}: expected a positive number")
    decay = config.optim.weight_decay
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1e9:
        raise ValueError(f"config.optim.weight_decay={decay!r}: expected a number >= 0")
    if config.data.format not in data_lib.FORMATS:
        raise ValueError(f"config.data.format={config.data.format!r}: expected one of "
                         f"{sorted(data_lib.FORMATS)}")
    for key in _BOOLS:
        if not isinstance(_get(config, key), bool):
            raise TypeError(f"config.{key}={_get(config, key)!r}: expected True or False")
    for key, choices in _CHOICES.items():
        if _get(config, key) not in choices:
            raise ValueError(f"config.{key}={_get(config, key)!r}: expected one of {choices}")
    buckets = config.data.buckets or ()
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in buckets):
        raise ValueError(f"config.data.buckets={buckets!r}: expected positive integer lengths")
    d = config.data
    if d.max_prompt_length >= d.max_length:
        raise ValueError(f"config.data.max_prompt_length={d.max_prompt_length}: must be below "
                         f"config.data.max_length={d.max_length} (0: the default)")
    b, m = config.batch_size, config.micro_batches
    if b % m:
        raise ValueError(f"config.batch_size={b} is not divisible by config.micro_batches={m}")
    shards = sharding.batch_shard_count(mesh)
    if (b // m) % shards:
        raise ValueError(f"config.batch_size={b}: each of the config.micro_batches={m} "
                         f"micro-batches ({b // m} rows) must split evenly over the {shards} "
                         f"batch shards of config.mesh={dict(mesh.shape)}")
    if b % jax.process_count():
        raise ValueError(f"config.batch_size={b} is not divisible by the "
                         f"{jax.process_count()} processes")
    return mesh


def fit(state: steps.TrainState, train_step: Callable, batches, *, num_steps: int,
        to_device: Callable[[dict], dict], checkpointer: checkpoint.Checkpointer,
        writer: metrics_lib.Writer, evaluate: Callable[[Any], dict] | None = None,
        frozen: Any = None, log_every: int = 1, eval_every: int = 0,
        desc: str = "train", on_nonfinite: Callable[..., None] | None = None,
        stop_at: int | None = None) -> tuple[steps.TrainState, dict[str, float]]:
    """Steps `state` to `num_steps`: logs, evaluates, checkpoints (the final step always).

    Args:
      state: the (restored) train state; training starts at `state.step`.
      train_step: `train_step(state, device batch, frozen) -> (state, metrics)`.
      batches: a grain iterator of host batches (`get_state()` is checkpointed).
      num_steps: the last step.
      to_device: host batch -> device batch (adds cached fields, places the arrays).
      checkpointer: where states and best params go.
      writer: where metrics go.
      evaluate: `evaluate(state) -> metrics` (held-out), or None.
      frozen: the step's frozen argument (reference model), or None.
      log_every: train metrics every this many steps (and at the last).
      eval_every: evaluation every this many steps (and at the last); 0 only at the last.
      desc: the progress bar's label.
      on_nonfinite: `on_nonfinite(step, host batch, state, metrics)`, called after a step that
        was not applied (`train/nonfinite`); it may raise to stop the run.
      stop_at: stop after this step (default `num_steps`), checkpointed: one segment of a run
        whose reference moves (`alignjax.reference`).

    Returns:
      The final state and the metrics logged at the last step.
    """
    start = int(state.step)
    bar = tqdm(total=num_steps, initial=start, desc=desc, unit="step",
               disable=not sharding.is_main_process())
    last, tokens, t0 = {}, 0, time.time()
    for step in range(start, num_steps if stop_at is None else stop_at):
        host = next(batches)
        batch = to_device(host)
        # counted on the global batch: with several hosts each holds only its rows
        tokens += sum(jnp.sum(v) for k, v in batch.items() if k.endswith("attention_mask"))
        state, metrics = train_step(state, batch, frozen)
        done = step + 1
        if on_nonfinite is not None and float(metrics["train/nonfinite"]):
            on_nonfinite(done, host, state, metrics)
        logged = {}
        if done % log_every == 0 or done == num_steps:
            logged = metrics_lib.to_host(metrics)
            logged["train/tokens_per_s"] = int(tokens) / (time.time() - t0)
            tokens, t0 = 0, time.time()
            bar.set_postfix(loss=f"{logged['train/loss']:.4f}",
                            tok_s=f"{logged['train/tokens_per_s']:.0f}")
        if evaluate is not None and ((eval_every and done % eval_every == 0)
                                     or done == num_steps):
            held_out = evaluate(state)
            logged.update(held_out)
            checkpointer.save_best(done, state.params, held_out)
        if logged:
            writer.write(done, logged)
            last = logged
        checkpointer.save(done, state, batches.get_state(),
                          force=done in (num_steps, stop_at))
        bar.update(1)
    bar.close()
    return state, last


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config.objective` as configured; returns the last logged metrics."""
    objective = objectives.make(config.objective, config.loss.to_dict())
    mesh = check_config(config)
    reference_lib.check(config, has_reference=objective.reference is not None)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    # data file errors surface before the model loads
    eval_counts = collections.Counter()
    train_ex, eval_ex, counts = data_lib.split_examples(config, workdir, eval_counts=eval_counts)
    train_ex, eval_ex = _as_inputs(objective, train_ex), _as_inputs(objective, eval_ex)
    model, _, tokenizer = models.load(config.model, mesh, head=objective.head)
    tok_kw = data_lib.tokenize_kwargs(config)
    train_data = data_lib.tokenize(train_ex, tokenizer, counts=counts, **tok_kw)
    eval_data = (data_lib.tokenize(eval_ex, tokenizer, counts=eval_counts, **tok_kw)
                 if eval_ex else None)
    all_counts = {"train": dict(train_data.counts),
                  "eval": dict(eval_data.counts) if eval_data is not None else {}}
    _write_json(workdir, "data_counts.json", all_counts)
    _say(f"data: {all_counts}")

    graphdef, params = nnx.split(model)
    del model
    buckets = tuple(config.data.buckets or ())
    passes = {"batch_size": config.eval_batch_size, "buckets": buckets}
    moving = reference_lib.moves(config)
    _, _, _, stages = reference_lib.settings(config)
    # sDPO: every stage trains on its own consecutive part of the examples
    stage_data = [train_data] if stages == 1 else [
        dataclasses.replace(train_data, examples=part)
        for part in reference_lib.stage_examples(train_data.examples, stages)]
    has_reference = objective.reference is not None
    frozen, ref_fn = None, None
    model_key = json.dumps(config.model.to_dict(), sort_keys=True, default=str)
    if has_reference and config.ref_cache:
        # one pass per reference instead of a reference forward in every step
        # replicated outputs: every process reads the values of the whole batch
        ref_fn = sharding.under(mesh, jax.jit(
            lambda p, b: objective.reference(nnx.merge(graphdef, p), b),
            out_shardings=sharding.replicated(mesh)))
    elif has_reference:
        frozen = objectives.Frozen(graphdef, jax.tree.map(jnp.copy, params))

    def cache_of(name: str, data, ref_params, begin: int) -> evaluate_lib.ReferenceCache:
        """Reference values of `data` under the reference in effect from step `begin`; saved,
        so that a resumed run does not repeat the pass."""
        moved = () if begin == 0 else (  # a moved reference: its checksums are in the key
            f"reference from step {begin}", json.dumps(checkpoint.fingerprint(ref_params)))
        return evaluate_lib.reference_cache(
            ref_fn, ref_params, data, mesh, **passes, desc=f"reference ({name})",
            path=os.path.join(workdir, "reference_cache", f"{name}.npz"),
            key=evaluate_lib.fingerprint(data, model_key, config.objective, *moved))

    train_cache = eval_cache = None
    if ref_fn is not None and not moving:  # the initial model is the reference throughout
        train_cache = cache_of("train", train_data, params, 0)
        eval_cache = cache_of("eval", eval_data, params, 0) if eval_data is not None else None
    initial_ref = None  # a moving reference starts as a copy (the state's params are donated)
    if has_reference and moving:
        initial_ref = frozen.params if frozen is not None else jax.tree.map(jnp.copy, params)

    tx = steps.optimizer(total_steps=config.steps, **config.optim.to_dict())
    init = functools.partial(steps.init_state, tx=tx, seed=config.seed)
    state_sharding = sharding.state_shardings(jax.eval_shape(init, params),
                                              jax.tree.map(lambda x: x.sharding, params), tx, mesh)
    state = jax.jit(init, out_shardings=state_sharding)(params)
    del params
    frozen_sharding = jax.tree.map(lambda x: x.sharding, frozen) if frozen is not None else None
    train_step = steps.make_train_step(graphdef, objective, tx, state_sharding=state_sharding,
                                       batch_sharding=sharding.batch_sharding(mesh),
                                       frozen_sharding=frozen_sharding,
                                       micro_batches=config.micro_batches, mesh=mesh)

    def batches_of(stage: int):
        # each host reads only the rows of the global batch that its devices hold
        return data_lib.batch_iterator(stage_data[stage], batch_size=config.batch_size,
                                       seed=config.seed + stage, num_epochs=None,
                                       bucket_lengths=buckets or None,
                                       rows=sharding.host_rows(mesh, config.batch_size))

    ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints,
                                   every=config.checkpoint_every, best_metric=config.best_metric,
                                   best_mode=config.best_mode)
    restored = ckpt.restore(state)
    data_state = None
    if restored is not None:
        state, data_state = restored
        _say(f"resumed from step {int(state.step)}")
    start = int(state.step)
    writer = metrics_lib.Writer(workdir, resume_step=start)
    segments = [s for s in reference_lib.segments(config) if s.end > start]
    # live: the reference in effect and what was computed from it
    live = {"begin": 0, "ref": initial_ref, "frozen": frozen, "train_cache": train_cache,
            "eval_cache": eval_cache, "eval_begin": None if moving else 0}
    if moving:
        sync, alpha, _, _ = reference_lib.settings(config)
        new_reference = reference_lib.make_update(  # sDPO: the policy at every stage's start
            "hard" if stages > 1 else sync, alpha, jax.tree.map(lambda x: x.sharding, initial_ref))

    def reference_from(begin: int):
        """The reference in effect from step `begin`: saved, or (a run stopped right after the
        checkpoint at `begin`) made again from the policy at `begin` and the one before."""
        if begin == 0:
            return initial_ref
        saved = reference_lib.restore(workdir, begin, initial_ref)
        if saved is not None:
            return saved
        before = [s.begin for s in reference_lib.segments(config) if s.begin < begin]
        if start != begin or not before:
            raise FileNotFoundError(f"{workdir}/reference/{begin}: the reference of the steps "
                                    f"from {begin} is missing (resuming from step {start})")
        ref = new_reference(reference_from(before[-1]), state.params)
        reference_lib.save(workdir, begin, ref)
        return ref

    def use_reference(begin: int, ref, stage: int) -> None:
        live.update(begin=begin, ref=ref)
        if frozen is not None:
            live["frozen"] = objectives.Frozen(graphdef, ref)
        if ref_fn is not None:
            live["train_cache"] = cache_of("train", stage_data[stage], ref, begin)

    evaluate = None
    if eval_data is not None:
        eval_fn = sharding.under(mesh, jax.jit(functools.partial(
            steps.eval_metrics, graphdef=graphdef, objective=objective),
            out_shardings=sharding.replicated(mesh)))

        def evaluate(s):
            if ref_fn is not None and live["eval_begin"] != live["begin"]:
                # held-out values of the reference in effect, once per reference evaluated
                live["eval_cache"] = cache_of("eval", eval_data, live["ref"], live["begin"])
                live["eval_begin"] = live["begin"]
            return evaluate_lib.evaluate(
                lambda p, b: eval_fn(p, b, live["frozen"]), s.params, eval_data, mesh,
                cache=live["eval_cache"], **passes)

    def to_device(host):
        if live["train_cache"] is not None:
            host = live["train_cache"].add_to(host)
        return sharding.host_to_global(
            {k: v for k, v in host.items() if k not in evaluate_lib.HOST_ONLY}, mesh,
            config.batch_size)

    def on_nonfinite(step: int, host: dict, state: steps.TrainState, metrics: dict) -> None:
        where = os.path.join(workdir, "nonfinite", str(step))
        ids = [int(i) for i in host["example_id"] if i >= 0]
        if jax.process_index() == 0:
            os.makedirs(where, exist_ok=True)
            np.savez(os.path.join(where, "batch.npz"), **host)
        checkpoint.save_state(os.path.join(where, "state"), state)
        origins = [train_ex[i].origin for i in ids]
        message = (f"step {step}: the loss or the gradients are not finite (train/loss="
                   f"{float(metrics['train/loss'])}, train/grad_norm="
                   f"{float(metrics['train/grad_norm'])}); the update was not applied. The batch "
                   f"holds examples {ids} ({', '.join(origins[:8])}"
                   f"{' ...' if len(origins) > 8 else ''}); batch and state saved in {where}")
        if config.on_nonfinite == "stop":
            raise FloatingPointError(f"{message}. Stopping (config.on_nonfinite='stop')")
        tqdm.write(f"{message}. Skipped (config.on_nonfinite='skip')")

    try:
        if start >= config.steps:
            _say(f"{workdir}: already trained to step {start} (config.steps="
                       f"{config.steps}); nothing to do")
            rows = [r for r in metrics_lib.read_metrics(workdir) if r["step"] == start]
            last = {k: v for r in rows for k, v in r.items() if k != "step"}
        else:
            if start == 0 and evaluate is not None and config.eval_at_start:
                initial = evaluate(state)
                writer.write(0, initial)
                _say(f"step 0: {initial}")
            batches, stage, ref = None, None, None
            for seg in segments:
                if moving:  # the reference of this segment, and its cached values
                    use_reference(seg.begin, ref if ref is not None else
                                  reference_from(seg.begin), seg.stage)
                if seg.stage != stage:
                    batches, stage = batches_of(seg.stage), seg.stage
                    if data_state is not None and (stages == 1 or start > seg.begin):
                        batches.set_state(data_state)  # resumed inside this stage
                    data_state = None
                state, last = fit(state, train_step, batches, num_steps=config.steps,
                                  stop_at=seg.end, to_device=to_device, checkpointer=ckpt,
                                  writer=writer, evaluate=evaluate, frozen=live["frozen"],
                                  log_every=config.log_every, eval_every=config.eval_every,
                                  desc=config.objective, on_nonfinite=on_nonfinite)
                if moving and seg.end < config.steps:  # saved before training goes on
                    ref = new_reference(live["ref"], state.params)
                    reference_lib.save(workdir, seg.end, ref)
    finally:
        ckpt.close()
        writer.close()
    if config.export and (start < config.steps
                          or not os.path.isdir(os.path.join(workdir, "export"))):
        export(nnx.merge(graphdef, state.params), tokenizer, workdir, mesh)
    _say(f"data: {all_counts}")
    return last
