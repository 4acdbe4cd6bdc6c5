"""Per-device memory plan of a training config on a mesh, before any weight is loaded.

    python -m alignjax.main --config configs/<exp>.py --workdir DIR --config.job=plan \
        --config.plan.mesh.fsdp=64 --config.plan.device_memory_gb=95

Shapes come from the model's config alone (`config.model.path`, or `config.plan.hf_config`
for a model that is not on disk): `jax.eval_shape` builds the parameters, the train state and
the batch as abstract arrays, each with the sharding the rules give it on the planned mesh.
Then, per device:

  parameters, optimiser state, reference model   from the shard shape of every leaf (exact)
  gradients                                      one copy of the parameters' shards (exact)
  reward models, critic                          `config.plan.reward_models` frozen copies and,
                                                 with `config.plan.critic`, a second trained
                                                 state (parameters, Adam, gradients)
  KV cache                                       2 x layers x [B, G, S, K] shards for
                                                 `config.plan.sample_batch` sequences of
                                                 `config.plan.sample_length` slots
  activations                                    the compiled train step's temporaries minus
                                                 the gradients (`memory_analysis()`)

The step is compiled for the whole planned mesh on simulated CPU devices (the plan job sets
XLA_FLAGS before JAX starts), so the activations are XLA's CPU buffer assignment for that
mesh: an estimate of what a TPU or GPU compiler allocates, not a measurement of it.
`config.plan.compile_layers` > 0 compiles models of that many and twice that many layers and
extrapolates the temporaries linearly to the full depth (every block holds the same
activations), which keeps the compilation of a deep model short. On CPU the process itself
(Python, JAX, libraries) adds the resident memory measured before planning: it is part of the
planned peak RSS there, and not of a TPU or GPU device's memory.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from alignjax import models, objectives, sharding, steps
from alignjax.models.config import ModelConfig, from_hf_config
from alignjax.models.weights import abstract_model

GB = 1e9
_SEQ_FIELDS = ("input_ids", "attention_mask", "loss_mask")


def process_rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of process `pid` (default this one) now (Linux /proc), 0 where it
    cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """The planned ModelConfig: `config.plan.hf_config` (a Hugging Face config.json as a dict)
    if given, else the checkpoint at `config.model.path`, with `config.model`'s overrides."""
    overrides = {k: config.model[k] for k in ("dtype", "param_dtype", "remat") if k in config.model}
    hf = config.plan.get("hf_config")
    hf = hf.to_dict() if hasattr(hf, "to_dict") else hf
    if hf:
        return from_hf_config(dict(hf), where="config.plan.hf_config", **overrides)
    return models.load_config(models.resolve_path(config.model.path), **overrides)


def plan_mesh_shape(config: ml_collections.ConfigDict) -> dict[str, int]:
    """`config.plan.mesh` as {data, fsdp, tensor}, every size explicit."""
    shape = {a: int(config.plan.mesh.get(a, 1)) for a in sharding.MESH_AXES}
    if any(s < 1 for s in shape.values()):
        raise ValueError(f"config.plan.mesh={shape}: give every size explicitly (>= 1)")
    return shape


def shard_bytes(tree) -> int:
    """Per-device bytes of a tree of ShapeDtypeStructs with shardings (uneven dims padded)."""
    def one(x) -> int:
        spec = tuple(x.sharding.spec) + (None,) * (len(x.shape) - len(x.sharding.spec))
        sizes = dict(x.sharding.mesh.shape)
        shard = []
        for n, axes in zip(x.shape, spec):
            axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
            shard.append(-(-n // math.prod(sizes[a] for a in axes)))
        return math.prod(shard) * x.dtype.itemsize

    return sum(one(x) for x in jax.tree.leaves(tree))


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def abstract_batch(objective: steps.Objective, rows: int, length: int,
                   sharded: jax.sharding.NamedSharding) -> dict[str, jax.ShapeDtypeStruct]:
    """The token fields of one global batch, as the data pipeline builds them (int32)."""
    names = {"sft": _SEQ_FIELDS, "correction": _SEQ_FIELDS,
             "pair": tuple(f"{s}_{f}" for s in ("chosen", "rejected") for f in _SEQ_FIELDS),
             "unpaired": _SEQ_FIELDS + tuple(f"kl_{f}" for f in _SEQ_FIELDS)}
    if objective.inputs not in names:
        raise ValueError(f"memory plan: objective inputs {objective.inputs!r} not supported")
    batch = {k: jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=sharded)
             for k in names[objective.inputs]}
    if objective.inputs == "unpaired":
        batch["label"] = jax.ShapeDtypeStruct((rows,), jnp.bool_, sharding=sharded)
    return batch


def _abstract_state(config, cfg: ModelConfig, mesh):
    """(objective, graphdef, abstract params, optimiser, abstract train state, its shardings)
    of the config's model `cfg` on `mesh`: shapes and shardings only, nothing allocated."""
    objective = objectives.make(config.objective, config.loss.to_dict())
    graphdef, abstract = abstract_model(cfg, objective.head)
    with nnx.logical_axis_rules(sharding.DEFAULT_RULES):
        param_sh = sharding.param_shardings(abstract, mesh)
    params = _abstract(abstract, param_sh)
    tx = steps.optimizer(total_steps=config.steps, **config.optim.to_dict())
    state_abs = jax.eval_shape(functools.partial(steps.init_state, tx=tx, seed=config.seed),
                               params)
    state_sh = sharding.state_shardings(state_abs, param_sh, tx, mesh)
    return objective, graphdef, params, tx, _abstract(state_abs, state_sh), state_sh


def abstract_step(config, cfg: ModelConfig, mesh, layers: int) -> dict[str, Any]:
    """The jitted train step of the config (with `layers` blocks) and its abstract state, batch
    and frozen model, each leaf with its sharding on `mesh`."""
    cfg = cfg.replace(num_layers=layers)
    objective, graphdef, params, tx, state, state_sh = _abstract_state(config, cfg, mesh)
    bsh = sharding.batch_sharding(mesh)
    batch = abstract_batch(objective, config.batch_size, config.data.max_length, bsh)
    frozen = frozen_sh = None
    if objective.reference is not None:
        refs = jax.eval_shape(lambda p, b: objective.reference(nnx.merge(graphdef, p), b),
                              params, batch)
        if config.ref_cache:  # cached reference quantities arrive with the batch
            batch.update({k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh)
                          for k, v in refs.items()})
        else:
            frozen = objectives.Frozen(graphdef, params)
            frozen_sh = jax.tree.map(lambda x: x.sharding, frozen)
    step = steps.make_train_step(graphdef, objective, tx, state_sharding=state_sh,
                                 batch_sharding=bsh, frozen_sharding=frozen_sh,
                                 micro_batches=config.micro_batches, mesh=mesh)
    return {"step": step, "state": state, "batch": batch, "frozen": frozen, "params": params}


def compile_step(config, cfg: ModelConfig, mesh, layers: int) -> dict[str, Any]:
    """`abstract_step` and the compiled step's per-device memory analysis (bytes)."""
    out = abstract_step(config, cfg, mesh, layers)
    analysis = out["step"].lower(out["state"], out["batch"], out["frozen"]).compile() \
        .memory_analysis()
    return {**out, "temp": int(analysis.temp_size_in_bytes),
            "arguments": int(analysis.argument_size_in_bytes),
            "outputs": int(analysis.output_size_in_bytes),
            "aliased": int(analysis.alias_size_in_bytes)}


def kv_cache_bytes(cfg: ModelConfig, shape: dict[str, int], rows: int, slots: int) -> int:
    """Per-device bytes of the sampler's KV cache: [B, G, S, K] per layer, keys and values,
    B over data x fsdp and G over tensor (`models.transformer.CACHE_AXES`)."""
    if rows <= 0 or slots <= 0:
        return 0
    b = -(-rows // (shape["data"] * shape["fsdp"]))
    g = -(-cfg.num_kv_heads // shape["tensor"]) if cfg.num_kv_heads % shape["tensor"] == 0 \
        else cfg.num_kv_heads  # indivisible heads stay replicated (`sharding.constrain`)
    return 2 * cfg.num_layers * b * g * slots * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize


def loaded_baseline(config: ml_collections.ConfigDict) -> tuple[int, str]:
    """(bytes, what they are) this process holds besides the parameters once the model and its
    tokenizer are loaded as the runner loads them (one CPU device): Python, JAX, the libraries,
    the tokenizer and what the loader leaves resident. Falls back to the imports alone when
    the model cannot be loaded here (e.g. a plan for weights that are not on this machine)."""
    import gc

    try:
        model, _, tokenizer = models.load(config.model, None)
    except (FileNotFoundError, OSError, ValueError) as e:
        return process_rss_bytes(), f"imports only (the model was not loaded: {e})"
    held = process_rss_bytes() - sum(x.nbytes for x in jax.tree.leaves(nnx.state(model)))
    del model, tokenizer
    gc.collect()
    return max(held, 0), "after loading the model and tokenizer, less the parameters"


def plan(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The per-device memory plan of `config` on `config.plan.mesh` (bytes per term)."""
    baseline, baseline_from = process_rss_bytes(), "imports"
    cfg = model_config(config)
    shape = plan_mesh_shape(config)
    devices = math.prod(shape.values())
    if jax.device_count() < devices:
        raise ValueError(f"config.plan.mesh={shape} needs {devices} devices, JAX has "
                         f"{jax.device_count()}: run the plan job through alignjax.main, "
                         "which simulates them on CPU")
    mesh = sharding.make_mesh(**shape, devices=jax.devices()[:devices])
    layers = int(config.plan.get("compile_layers", 0))
    if layers > 0 and 2 * layers < cfg.num_layers:
        one, two = (compile_step(config, cfg, mesh, n) for n in (layers, 2 * layers))
        per_block = (two["temp"] - one["temp"]) / layers
        temp = int(one["temp"] + per_block * (cfg.num_layers - layers))
        how = (f"compiled with {layers} and {2 * layers} layers, temporaries extrapolated "
               f"linearly to {cfg.num_layers} ({per_block / GB:.3f} GB per block)")
    else:
        one = None
        how = f"compiled with all {cfg.num_layers} layers"
    full = _full_terms(config, cfg, mesh)
    if one is None:
        compiled = compile_step(config, cfg, mesh, cfg.num_layers)
        temp = compiled["temp"]
        out_extra = compiled["outputs"] - compiled["aliased"]
    else:  # outputs not aliased to the donated state (metrics) do not grow with depth
        out_extra = two["outputs"] - two["aliased"]
    terms = dict(full)
    terms["activations"] = max(temp - terms["gradients"], 0)
    terms["step outputs (metrics)"] = max(out_extra, 0)
    on_cpu = jax.default_backend() == "cpu" and not config.plan.get("hf_config")
    if on_cpu and devices == 1:  # device memory is this process's memory
        baseline, baseline_from = loaded_baseline(config)
        terms["process baseline (CPU, model loaded)"] = baseline
    total = sum(terms.values())
    limit = float(config.plan.device_memory_gb) * GB
    largest = max(terms, key=terms.get)
    return {"model": _describe(cfg), "mesh": shape, "devices": devices,
            "batch_size": int(config.batch_size), "max_length": int(config.data.max_length),
            "micro_batches": int(config.micro_batches), "objective": config.objective,
            "reference": ("none" if objectives.make(config.objective, config.loss.to_dict())
                          .reference is None else "cached log-probs" if config.ref_cache
                          else f"model in memory ({cfg.param_dtype} copy)"),
            "activations_from": how, "baseline_from": baseline_from,
            "terms": terms, "total": total, "device_memory": limit, "largest": largest,
            "fits": total <= limit, "advice": advice(config, cfg, shape, terms, total, limit)}


def _full_terms(config, cfg: ModelConfig, mesh) -> dict[str, int]:
    """The exact terms (shard shapes of abstract arrays) of the full-depth model."""
    objective, _, _, _, state, _ = _abstract_state(config, cfg, mesh)
    p = shard_bytes(state.params)
    batch = abstract_batch(objective, config.batch_size, config.data.max_length,
                           sharding.batch_sharding(mesh))
    reference = p if objective.reference is not None and not config.ref_cache else 0
    shape = dict(mesh.shape)
    critic = 4 * p if config.plan.get("critic") else 0
    return {"parameters": p,
            "optimiser state": shard_bytes(state.opt_state) + shard_bytes((state.step,
                                                                          state.rng)),
            "gradients": p,
            "reference model": reference,
            "reward models": int(config.plan.get("reward_models", 0)) * p,
            "critic (parameters, Adam, gradients)": critic,
            "KV cache": kv_cache_bytes(cfg, shape, int(config.plan.get("sample_batch", 0)),
                                        int(config.plan.get("sample_length", 0))),
            "batch": shard_bytes(batch)}


def _describe(cfg: ModelConfig) -> dict[str, Any]:
    return {"family": cfg.family, "parameters": cfg.num_params(), "layers": cfg.num_layers,
            "hidden": cfg.hidden_size, "mlp": cfg.intermediate_size, "heads": cfg.num_heads,
            "kv_heads": cfg.num_kv_heads, "vocab": cfg.vocab_size, "dtype": cfg.dtype,
            "param_dtype": cfg.param_dtype, "remat": cfg.remat}


def advice(config, cfg: ModelConfig, shape: dict[str, int], terms: dict[str, int], total: int,
           limit: float) -> list[str]:
    """What to change when the plan does not fit, led by its largest term."""
    if total <= limit:
        return []
    out = []
    state = sum(terms[k] for k in ("parameters", "optimiser state", "gradients",
                                   "reference model", "reward models",
                                   "critic (parameters, Adam, gradients)"))
    if terms["activations"] >= state:
        if cfg.remat == "none":
            out.append("config.model.remat='dots' or 'full': recompute block activations in "
                       "the backward pass instead of keeping them")
        out.append(f"config.micro_batches={2 * int(config.micro_batches)}: half the rows per "
                   "forward/backward, same global batch")
    if state >= terms["activations"] or not out:
        if shape["data"] > 1:
            out.append(f"config.mesh: move data parallelism into fsdp (fsdp={shape['fsdp'] * 2}"
                       f", data={shape['data'] // 2}) so parameters, gradients and Adam "
                       "are split over more devices")
        else:
            out.append(f"config.plan.mesh.fsdp={shape['fsdp'] * 2} (more devices): parameters, "
                       "gradients and Adam moments are split over fsdp x tensor")
        if config.model.param_dtype == "float32":
            out.append("config.model.param_dtype='bfloat16' halves parameters, gradients and "
                       "Adam moments (at the cost of float32 master weights)")
        if terms["reference model"]:
            out.append("config.ref_cache=True: reference log-probs once before training "
                       "instead of a reference model in memory")
    return out


def format_plan(p: dict[str, Any]) -> str:
    m = p["model"]
    lines = [f"memory plan: {p['objective']} on mesh {p['mesh']} ({p['devices']} devices)",
             f"  model: {m['family']}, {m['parameters'] / 1e9:.2f}B parameters, {m['layers']} "
             f"layers, D={m['hidden']}, F={m['mlp']}, H={m['heads']}, G={m['kv_heads']}, "
             f"V={m['vocab']}",
             f"  assumptions: compute {m['dtype']}, parameters/gradients/Adam in "
             f"{m['param_dtype']}, remat={m['remat']}, global batch {p['batch_size']} x "
             f"{p['max_length']} tokens in {p['micro_batches']} micro-batch(es), "
             f"reference {p['reference']}",
             f"  activations: {p['activations_from']}",
             *([f"  process baseline: {p['baseline_from']}"]
               if any(k.startswith("process baseline") for k in p["terms"]) else []),
             "  per device:"]
    for name, value in p["terms"].items():
        lines.append(f"    {name:<48} {value / GB:9.3f} GB")
    lines.append(f"    {'total':<48} {p['total'] / GB:9.3f} GB of {p['device_memory'] / GB:.1f}"
                 f" GB: {'fits' if p['fits'] else 'DOES NOT FIT'}")
    lines.append(f"  largest term: {p['largest']}")
    lines += [f"  to fit: {a}" for a in p["advice"]]
    return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """The plan job: prints the plan and writes workdir/memory_plan.json."""
    p = plan(config)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        print(format_plan(p))
        with open(os.path.join(workdir, "memory_plan.json"), "w") as f:
            json.dump(p, f, indent=2)
    summary = {"total_gb": p["total"] / GB, "largest": p["largest"], "fits": p["fits"]}
    return {"plan": p, "summary": summary}
