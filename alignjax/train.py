"""The offline runner: `run(config, workdir)` sets a run up, `fit(...)` is its training loop.

Workdir layout: config.json (resolved config), data_counts.json (rows read, dropped, truncated),
metrics.jsonl and tensorboard/ (`alignjax.metrics`), checkpoints/ and best/
(`alignjax.checkpoint`), export/ (Hugging Face format, at the end). Re-running the same
command resumes from the last checkpoint (parameters, optimiser, step, RNG, data position); a
finished run is not trained again.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from tqdm.auto import tqdm

from alignjax import checkpoint, models, objectives, sharding, steps
from alignjax import data as data_lib
from alignjax import evaluate as evaluate_lib
from alignjax import metrics as metrics_lib


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


def export(model, tokenizer, workdir: str, mesh: jax.sharding.Mesh | None = None) -> str:
    """Writes `workdir/export` (Hugging Face format) whole or not at all (process 0).

    With several processes, pass the mesh: every process then joins in gathering the
    parameters, which process 0 writes.
    """
    out = os.path.join(workdir, "export")
    if mesh is not None and jax.process_count() > 1:
        graphdef, params = nnx.split(model)
        model = nnx.merge(graphdef, sharding.replicate(params, mesh))
    if jax.process_index() == 0:
        tmp = out + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        models.save_hf(model, tmp, tokenizer=tokenizer)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return out


def fit(state: steps.TrainState, train_step: Callable, batches, *, num_steps: int,
        to_device: Callable[[dict], dict], checkpointer: checkpoint.Checkpointer,
        writer: metrics_lib.Writer, evaluate: Callable[[Any], dict] | None = None,
        frozen: Any = None, log_every: int = 1, eval_every: int = 0,
        desc: str = "train") -> tuple[steps.TrainState, dict[str, float]]:
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

    Returns:
      The final state and the metrics logged at the last step.
    """
    start = int(state.step)
    bar = tqdm(total=num_steps, initial=start, desc=desc, unit="step",
               disable=not sharding.is_main_process())
    last, tokens, t0 = {}, 0, time.time()
    for step in range(start, num_steps):
        batch = to_device(next(batches))
        # counted on the global batch: with several hosts each holds only its rows
        tokens += sum(jnp.sum(v) for k, v in batch.items() if k.endswith("attention_mask"))
        state, metrics = train_step(state, batch, frozen)
        done = step + 1
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
        checkpointer.save(done, state, batches.get_state(), force=done == num_steps)
        bar.update(1)
    bar.close()
    return state, last


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config.objective` as configured; returns the last logged metrics."""
    objective = objectives.make(config.objective, config.loss.to_dict())
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    mesh = sharding.make_mesh(**config.mesh)
    # data file errors surface before the model loads
    train_ex, eval_ex, counts = data_lib.split_examples(config, workdir)
    train_ex, eval_ex = _as_inputs(objective, train_ex), _as_inputs(objective, eval_ex)
    model, _, tokenizer = models.load(config.model, mesh, head=objective.head)
    tok_kw = data_lib.tokenize_kwargs(config)
    train_data = data_lib.tokenize(train_ex, tokenizer, counts=counts, **tok_kw)
    eval_data = data_lib.tokenize(eval_ex, tokenizer, **tok_kw) if eval_ex else None
    all_counts = {"train": dict(train_data.counts),
                  "eval": dict(eval_data.counts) if eval_data is not None else {}}
    _write_json(workdir, "data_counts.json", all_counts)
    _say(f"data: {all_counts}")

    graphdef, params = nnx.split(model)
    del model
    buckets = tuple(config.data.buckets or ())
    passes = {"batch_size": config.eval_batch_size, "buckets": buckets}
    frozen, train_cache, eval_cache = None, None, None
    if objective.reference is not None and config.ref_cache:
        # one pass now instead of a reference forward in every step
        # replicated outputs: every process reads the values of the whole batch
        ref_fn = sharding.under(mesh, jax.jit(
            lambda p, b: objective.reference(nnx.merge(graphdef, p), b),
            out_shardings=sharding.replicated(mesh)))
        train_cache = evaluate_lib.reference_cache(ref_fn, params, train_data, mesh, **passes)
        if eval_data is not None:
            eval_cache = evaluate_lib.reference_cache(ref_fn, params, eval_data, mesh, **passes)
    elif objective.reference is not None:
        frozen = objectives.Frozen(graphdef, jax.tree.map(jnp.copy, params))

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
    # each host reads only the rows of the global batch that its devices hold
    batches = data_lib.batch_iterator(train_data, batch_size=config.batch_size, seed=config.seed,
                                      num_epochs=None, bucket_lengths=buckets or None,
                                      rows=sharding.host_rows(mesh, config.batch_size))
    ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints,
                                   every=config.checkpoint_every, best_metric=config.best_metric,
                                   best_mode=config.best_mode)
    restored = ckpt.restore(state)
    if restored is not None:
        state, data_state = restored
        batches.set_state(data_state)
        _say(f"resumed from step {int(state.step)}")
    start = int(state.step)
    writer = metrics_lib.Writer(workdir, resume_step=start)

    evaluate = None
    if eval_data is not None:
        eval_fn = sharding.under(mesh, jax.jit(functools.partial(
            steps.eval_metrics, graphdef=graphdef, objective=objective),
            out_shardings=sharding.replicated(mesh)))
        evaluate = lambda s: evaluate_lib.evaluate(  # noqa: E731
            lambda p, b: eval_fn(p, b, frozen), s.params, eval_data, mesh, cache=eval_cache,
            **passes)

    def to_device(host):
        if train_cache is not None:
            host = train_cache.add_to(host)
        return sharding.host_to_global(
            {k: v for k, v in host.items() if k not in evaluate_lib.HOST_ONLY}, mesh,
            config.batch_size)

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
            state, last = fit(state, train_step, batches, num_steps=config.steps,
                              to_device=to_device, checkpointer=ckpt, writer=writer,
                              evaluate=evaluate, frozen=frozen, log_every=config.log_every,
                              eval_every=config.eval_every, desc=config.objective)
    finally:
        ckpt.close()
        writer.close()
    if config.export and (start < config.steps
                          or not os.path.isdir(os.path.join(workdir, "export"))):
        export(nnx.merge(graphdef, state.params), tokenizer, workdir, mesh)
    return last
