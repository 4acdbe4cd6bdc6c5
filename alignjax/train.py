"""The experiment runner: `run(config, workdir)` trains, evaluates, checkpoints and exports.

Workdir layout: config.json (resolved config), data_counts.json (rows read, dropped, truncated),
metrics.jsonl, tensorboard/ (events), checkpoints/ (orbax: the last `keep_checkpoints` states
with the data iterator position), best/ (parameters with the best `best_metric` so far),
export/ (Hugging Face format, at the end). Re-running the same command resumes from the last
checkpoint: parameters, optimiser, step, RNG and data position.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

from alignjax import data as data_lib
from alignjax import models, objectives, sharding, steps
from alignjax.losses import merge_metrics
from alignjax.tokenizer import load_tokenizer

# Batch fields that stay on the host (bookkeeping, not model inputs).
_HOST_ONLY = ("example_id", "example_ids")


def model_path(config) -> str:
    path = config.model.path
    if path == "smollm2-135m-instruct":
        from alignjax.assets import smollm2_gguf_path

        return smollm2_gguf_path()
    return path


def _load_model(config, mesh, head: str):
    path = model_path(config)
    overrides = {"dtype": config.model.dtype, "param_dtype": config.model.param_dtype,
                 "remat": config.model.remat}
    cfg = (models.gguf_config(path, **overrides) if path.endswith(".gguf")
           else models.load_hf_config(path, **overrides))
    _, abstract = nnx.split(nnx.eval_shape(lambda: models.build(cfg, head=head)))
    with nnx.logical_axis_rules(sharding.DEFAULT_RULES):
        shardings = sharding.param_shardings(abstract, mesh)
    model, cfg = models.load_pretrained(path, head=head, shardings=shardings, **overrides)
    return model, cfg


def _resolve(sources, key: str) -> list[str]:
    """Local paths of `config.data.<key>`; "shared:<rel>" is relative to the shared data dir."""
    sources = sources.split(",") if isinstance(sources, str) else list(sources)
    out = []
    for s in sources:
        if s.startswith("shared:"):
            s = os.path.join(data_lib.shared_data_dir(), s[len("shared:"):])
        if ":" not in s.split(os.sep)[0] and not os.path.exists(s):
            raise FileNotFoundError(f"config.data.{key}: no such file {s!r}")
        out.append(s)
    return out


def _as_sft(examples):
    """SFT on the chosen responses of preference pairs; other examples are kept as they are."""
    return [data_lib.SFTExample(messages=(*e.prompt, {"role": "assistant", "content": e.chosen}),
                                origin=e.origin)
            if isinstance(e, data_lib.PairExample) else e for e in examples]


def split_examples(config, workdir):
    """(train examples, held-out examples, parse counts) as `config.data` selects them."""
    d = config.data
    if d.train == "embedded:quickstart":
        from alignjax.quickstart_data import write_quickstart

        train_sources = [write_quickstart(os.path.join(workdir, "quickstart.jsonl"))]
    else:
        train_sources = _resolve(d.train, "train")
    examples, counts = data_lib.load_examples(train_sources, d.format,
                                              on_malformed=d.on_malformed)
    if d.eval:
        eval_examples, _ = data_lib.load_examples(_resolve(d.eval, "eval"), d.format,
                                                  on_malformed=d.on_malformed)
    else:  # hold out `eval_size` examples: the last ones, or a random subset
        n = d.eval_size
        if n >= len(examples):
            raise ValueError(f"config.data.eval_size={n} leaves no training examples "
                             f"({len(examples)} in {train_sources})")
        if d.holdout == "random":
            order = np.random.default_rng(d.holdout_seed).permutation(len(examples))
            examples = [examples[i] for i in order]
        elif d.holdout != "last":
            raise ValueError(f"config.data.holdout={d.holdout!r}: expected 'last' or 'random'")
        examples, eval_examples = examples[:len(examples) - n], examples[len(examples) - n:]
    if d.train_size:
        examples = examples[:d.train_size]
    inputs = objectives.make(config.objective, config.loss.to_dict()).inputs
    if inputs == "sft":
        examples, eval_examples = _as_sft(examples), _as_sft(eval_examples)
    elif inputs == "unpaired":
        examples = data_lib.as_unpaired(examples)
        eval_examples = data_lib.as_unpaired(eval_examples) if eval_examples else eval_examples
    return examples, eval_examples, counts


def tokenize_kwargs(config) -> dict[str, Any]:
    """The truncation arguments of `data.tokenize` that `config.data` sets."""
    d = config.data
    return {"max_length": d.max_length, "truncation": d.truncation,
            "max_prompt_length": d.max_prompt_length or None}


def _to_device(batch, batch_sharding):
    return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
            for k, v in batch.items() if k not in _HOST_ONLY}


def _with_reference(batch, cache):
    """Adds cached reference quantities (by example id) to a host batch."""
    if cache is None:
        return batch
    ids = np.maximum(batch["example_id"], 0)
    return {**batch, **{name: values[ids] for name, values in cache.items()}}


def _in_order(data, config, desc: str):
    """One pass over `data` in order, in eval-size batches, with a progress bar."""
    it = data_lib.batch_iterator(data, batch_size=config.eval_batch_size, shuffle=False,
                                 num_epochs=1, drop_remainder=False, prefetch=0,
                                 bucket_lengths=config.data.buckets or None)
    total = -(-len(data) // config.eval_batch_size)
    return tqdm(it, total=total, desc=desc, unit="batch", leave=False)


def _reference_cache(ref_fn, params, data, config, batch_sharding):
    """The reference quantities of every example of `data`, once: {name: [N] float32}."""
    cache = {}
    for b in _in_order(data, config, "reference log-probs"):
        out = jax.device_get(ref_fn(params, _to_device(b, batch_sharding)))
        keep = b["example_id"] >= 0
        for name, values in out.items():
            cache.setdefault(name, np.zeros(len(data), np.float32))
            cache[name][b["example_id"][keep]] = values[keep]
    return cache


def wilson_interval(successes: float, n: float, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a binomial proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _evaluate(eval_fn, state, eval_data, ref_cache, config, batch_sharding, frozen):
    if eval_data is None:
        return {}
    results = [jax.device_get(eval_fn(state.params,
                                      _to_device(_with_reference(b, ref_cache), batch_sharding),
                                      frozen))
               for b in _in_order(eval_data, config, "eval")]
    merged = merge_metrics({k: np.stack([r[k] for r in results]) for k in results[0]})
    out = {f"eval/{k}": float(v) for k, v in merged.items() if not k.endswith(("/sum", "/count"))}
    if "eval/sft/nll" in out:
        out["eval/perplexity"] = float(np.exp(out["eval/sft/nll"]))
    for name in [k for k in out if k.endswith("/accuracy")]:
        n = len(eval_data)
        out[f"{name}_ci95_low"], out[f"{name}_ci95_high"] = wilson_interval(out[name] * n, n)
    return out


class _Writer:
    """metrics.jsonl and TensorBoard events (process 0 only)."""

    def __init__(self, workdir: str):
        self.active = jax.process_index() == 0
        if self.active:
            from tensorboardX import SummaryWriter

            self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]):
        if not self.active:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)
        self.tb.flush()

    def close(self):
        if self.active:
            self.jsonl.close()
            self.tb.close()


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config.objective` as configured; returns the last train and eval metrics."""
    # config.objective and config.loss errors surface before anything is read or loaded
    objective = objectives.make(config.objective, config.loss.to_dict())
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    mesh = sharding.make_mesh(**config.mesh)
    tokenizer = load_tokenizer(model_path(config))
    # data file errors surface before the model loads
    train_ex, eval_ex, counts = split_examples(config, workdir)
    model, cfg = _load_model(config, mesh, objective.head)
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"config.model.path: the tokenizer has {len(tokenizer)} tokens but the "
                         f"model's vocabulary has {cfg.vocab_size}: they do not belong together")
    tok_kw = tokenize_kwargs(config)
    train_data = data_lib.tokenize(train_ex, tokenizer, counts=counts, **tok_kw)
    eval_data = data_lib.tokenize(eval_ex, tokenizer, **tok_kw) if eval_ex else None
    if eval_data is not None and objective.inputs not in ("sft", "correction"):
        # pair metrics are batch means: keep whole eval batches so no padding row counts
        whole = len(eval_data) - len(eval_data) % config.eval_batch_size
        if whole < len(eval_data):
            tqdm.write(f"eval: using {whole} of {len(eval_data)} pairs (whole batches of "
                       f"config.eval_batch_size={config.eval_batch_size})")
            eval_data = dataclasses.replace(eval_data, examples=eval_data.examples[:whole])
    all_counts = {"train": dict(train_data.counts),
                  "eval": dict(eval_data.counts) if eval_data is not None else {}}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "data_counts.json"), "w") as f:
            json.dump(all_counts, f, indent=2)
    tqdm.write(f"data: {all_counts}")

    graphdef, params = nnx.split(model)
    tx = steps.optimizer(total_steps=config.steps, **config.optim.to_dict())
    batch_sharding = sharding.batch_sharding(mesh)
    needs_ref = objective.reference is not None
    frozen, ref_cache, eval_ref_cache = None, None, None
    if needs_ref and config.ref_cache:  # one pass now instead of a forward in every step
        ref_fn = jax.jit(lambda p, b: objective.reference(nnx.merge(graphdef, p), b))
        ref_cache = _reference_cache(ref_fn, params, train_data, config, batch_sharding)
        if eval_data is not None:
            eval_ref_cache = _reference_cache(ref_fn, params, eval_data, config, batch_sharding)
    elif needs_ref:
        frozen = objectives.Frozen(graphdef, jax.tree.map(jnp.copy, params))
    init = functools.partial(steps.init_state, tx=tx, seed=config.seed)
    state_sharding = sharding.state_shardings(jax.eval_shape(init, params),
                                              jax.tree.map(lambda x: x.sharding, params), tx, mesh)
    state = jax.jit(init, out_shardings=state_sharding)(params)
    del params, model
    frozen_sharding = (jax.tree.map(lambda x: x.sharding, frozen) if frozen is not None else None)
    train_step = steps.make_train_step(graphdef, objective, tx, state_sharding=state_sharding,
                                       batch_sharding=batch_sharding,
                                       frozen_sharding=frozen_sharding,
                                       micro_batches=config.micro_batches)

    @jax.jit
    def eval_fn(params, batch, frozen):
        total = objective.count(batch)
        return objective.loss(nnx.merge(graphdef, params), batch, frozen, jax.random.key(0),
                              total)[1]

    def evaluate(state):
        return _evaluate(eval_fn, state, eval_data, eval_ref_cache, config, batch_sharding,
                         frozen)

    it = data_lib.batch_iterator(train_data, batch_size=config.batch_size, seed=config.seed,
                                 num_epochs=None, bucket_lengths=config.data.buckets or None)
    manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints,
                                             save_interval_steps=config.checkpoint_every))
    best_sign = {"min": 1.0, "max": -1.0}[config.best_mode]
    best = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "best")),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda m: best_sign * m[config.best_metric], best_mode="min"))
    if manager.latest_step() is not None:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
        state = restored.state
        it.set_state(restored.data)
        tqdm.write(f"resumed from step {int(state.step)}")

    def save_best(step, metrics):
        if eval_data is None or config.best_metric not in metrics:
            return
        best.save(step, args=ocp.args.StandardSave(state.params),
                  metrics={config.best_metric: metrics[config.best_metric]})

    writer = _Writer(workdir)
    start = int(state.step)
    if start == 0 and eval_data is not None and config.eval_at_start:
        initial = evaluate(state)
        writer.write(0, initial)
        tqdm.write(f"step 0: {initial}")
    bar = tqdm(total=config.steps, initial=start, desc=config.objective, unit="step")
    last, tokens, t0 = {}, 0, time.time()
    for step in range(start, config.steps):
        batch = _with_reference(next(it), ref_cache)
        tokens += int(sum(np.sum(v) for k, v in batch.items() if k.endswith("attention_mask")))
        state, metrics = train_step(state, _to_device(batch, batch_sharding), frozen)
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()
                       if not k.endswith(("/sum", "/count"))}
            metrics["train/tokens_per_s"] = tokens / (time.time() - t0)
            if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                metrics.update(evaluate(state))
                save_best(step + 1, metrics)
            tokens, t0 = 0, time.time()
            last = metrics
            writer.write(step + 1, metrics)
            bar.set_postfix(loss=f"{metrics['train/loss']:.4f}",
                            tok_s=f"{metrics['train/tokens_per_s']:.0f}")
        manager.save(step + 1, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(it.get_state())))
        bar.update(1)
    bar.close()
    manager.wait_until_finished()
    best.wait_until_finished()
    writer.close()
    if config.export:
        models.save_hf(nnx.merge(graphdef, state.params), os.path.join(workdir, "export"),
                       tokenizer=tokenizer)
    return last
