"""The experiment runner: `run(config, workdir)` trains, evaluates, checkpoints and exports.

Workdir layout: config.json (resolved config), metrics.jsonl, tensorboard/, checkpoints/ (orbax,
with the data iterator state), export/ (Hugging Face format, at the end). Re-running the same
command resumes from the last checkpoint: parameters, optimiser, step, RNG and data position.
"""

from __future__ import annotations

import json
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


def _model_path(config) -> str:
    path = config.model.path
    if path == "smollm2-135m-instruct":
        from alignjax.assets import smollm2_gguf_path

        return smollm2_gguf_path()
    return path


def _load_model(config, mesh):
    path = _model_path(config)
    head = "scalar" if config.objective == "rm" else "lm"
    overrides = dict(dtype=config.model.dtype, param_dtype=config.model.param_dtype,
                     remat=config.model.remat)
    cfg = (models.gguf_config(path, **overrides) if path.endswith(".gguf")
           else models.load_hf_config(path, **overrides))
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: models.build(cfg, head=head)))
    with nnx.logical_axis_rules(sharding.DEFAULT_RULES):
        shardings = sharding.param_shardings(abstract, mesh)
    model, cfg = models.load_pretrained(path, head=head, shardings=shardings, **overrides)
    return model, cfg


def _examples(config, workdir):
    source = config.data.train
    if source == "embedded:quickstart":
        from alignjax.quickstart_data import write_quickstart

        source = write_quickstart(os.path.join(workdir, "quickstart.jsonl"))
    examples, counts = data_lib.load_examples(source, config.data.format,
                                              on_malformed=config.data.on_malformed)
    if config.data.eval:
        eval_examples, _ = data_lib.load_examples(config.data.eval, config.data.format,
                                                  on_malformed=config.data.on_malformed)
    else:  # hold out the last `eval_size` examples
        n = config.data.eval_size
        if n >= len(examples):
            raise ValueError(f"config.data.eval_size={n} leaves no training examples "
                             f"({len(examples)} in {source})")
        examples, eval_examples = examples[:-n] if n else examples, examples[-n:] if n else []
    return examples, eval_examples, counts


def _to_device(batch, batch_sharding):
    return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
            for k, v in batch.items() if k not in _HOST_ONLY}


def _evaluate(eval_fn, state, eval_data, config, batch_sharding, frozen):
    if eval_data is None:
        return {}
    it = data_lib.batch_iterator(eval_data, batch_size=config.eval_batch_size, shuffle=False,
                                 num_epochs=1, drop_remainder=False, prefetch=0,
                                 bucket_lengths=config.data.buckets or None)
    results = [jax.device_get(eval_fn(state.params, _to_device(b, batch_sharding), frozen))
               for b in it]
    merged = merge_metrics({k: np.stack([r[k] for r in results]) for k in results[0]})
    out = {f"eval/{k}": float(v) for k, v in merged.items() if not k.endswith(("/sum", "/count"))}
    if "eval/sft/nll" in out:
        out["eval/perplexity"] = float(np.exp(out["eval/sft/nll"]))
    return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config.objective` as configured; returns the last train and eval metrics."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    mesh = sharding.make_mesh(**config.mesh)
    tokenizer = load_tokenizer(_model_path(config))
    model, cfg = _load_model(config, mesh)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"config.model.path: tokenizer has {tokenizer.vocab_size} tokens but the "
                         f"model's vocabulary is {cfg.vocab_size}")
    train_ex, eval_ex, counts = _examples(config, workdir)
    tok_kw = dict(max_length=config.data.max_length, truncation=config.data.truncation)
    train_data = data_lib.tokenize(train_ex, tokenizer, counts=counts, **tok_kw)
    eval_data = data_lib.tokenize(eval_ex, tokenizer, **tok_kw) if eval_ex else None
    if counts:
        tqdm.write(f"data: {dict(counts)}")

    graphdef, params = nnx.split(model)
    objective = objectives.get(config.objective, **config.loss.to_dict())
    tx = steps.optimizer(total_steps=config.steps, **config.optim.to_dict())
    state = jax.jit(lambda p: steps.init_state(p, tx, config.seed))(params)
    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    batch_sharding = sharding.batch_sharding(mesh)
    needs_ref = config.objective in objectives.PREFERENCE_LOSSES[:4]
    frozen = objectives.Frozen(graphdef, jax.tree.map(jnp.copy, params)) if needs_ref else None
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

    it = data_lib.batch_iterator(train_data, batch_size=config.batch_size, seed=config.seed,
                                 num_epochs=None, bucket_lengths=config.data.buckets or None)
    manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints,
                                             save_interval_steps=config.checkpoint_every))
    if manager.latest_step() is not None:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
        state = restored.state
        it.set_state(restored.data)
        tqdm.write(f"resumed from step {int(state.step)}")

    metrics_file = open(os.path.join(workdir, "metrics.jsonl"), "a")
    start = int(state.step)
    if start == 0 and eval_data is not None:  # the starting point of the eval curves
        initial = _evaluate(eval_fn, state, eval_data, config, batch_sharding, frozen)
        metrics_file.write(json.dumps({"step": 0, **initial}) + "\n")
        tqdm.write(f"step 0: {initial}")
    bar = tqdm(total=config.steps, initial=start, desc=config.objective, unit="step")
    last, tokens, t0 = {}, 0, time.time()
    for step in range(start, config.steps):
        batch = next(it)
        tokens += int(np.sum(batch.get("attention_mask", batch.get("chosen_attention_mask"))))
        state, metrics = train_step(state, _to_device(batch, batch_sharding), frozen)
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()
                       if not k.endswith(("/sum", "/count"))}
            metrics["train/tokens_per_s"] = tokens / (time.time() - t0)
            if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                metrics.update(_evaluate(eval_fn, state, eval_data, config, batch_sharding,
                                         frozen))
            tokens, t0 = 0, time.time()
            last = metrics
            metrics_file.write(json.dumps({"step": step + 1, **metrics}) + "\n")
            metrics_file.flush()
            bar.set_postfix(loss=f"{metrics['train/loss']:.4f}",
                            tok_s=f"{metrics['train/tokens_per_s']:.0f}")
        manager.save(step + 1, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(it.get_state())))
        bar.update(1)
    bar.close()
    manager.wait_until_finished()
    metrics_file.close()
    if config.export:
        models.save_hf(nnx.merge(graphdef, state.params), os.path.join(workdir, "export"),
                       tokenizer=tokenizer)
    return last
