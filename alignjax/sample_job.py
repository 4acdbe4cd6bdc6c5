"""The sample job: prompts from a data file -> completions in WORKDIR/samples.jsonl.

    python -m alignjax.main --config configs/sample.py --workdir DIR --config.model.path=PATH

`config.model.path` is a GGUF file, a Hugging Face directory, the workdir of a training run
(its `export/` directory is loaded) or "smollm2-135m-instruct". Prompts are read with the data
pipeline (`config.data.prompts` in `config.data.format`, any format with prompts), rendered
through the tokenizer's chat template and sampled in batches of `config.batch_size` with
`alignjax.sampler`. Each line of samples.jsonl holds: example_id, sample (0..n-1), origin (file
and row), prompt (the messages), response (text, stop token excluded), finish_reason ("stop" or
"length"), num_tokens, logp (sum of the response's log-probs under the model) and sample_logp
(the same under the sampling distribution). WORKDIR also gets the resolved config.json and
data_counts.json.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from alignjax import data as data_lib
from alignjax import models, sharding
from alignjax.models import load_tokenizer
from alignjax.sampler import FINISH_REASONS, SamplingParams, make_sampler

OUTPUT = "samples.jsonl"


def resolve_model_path(path: str) -> str:
    """A loadable checkpoint path for `config.model.path` (see the module docstring)."""
    if path == "smollm2-135m-instruct":
        from alignjax.assets import smollm2_gguf_path

        return smollm2_gguf_path()
    export = os.path.join(path, "export")
    if os.path.isdir(export):  # a training workdir (its config.json is the run's, not a model's)
        return export
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json")):
        return path
    if os.path.isdir(path):
        raise FileNotFoundError(f"config.model.path={path!r}: neither a Hugging Face directory "
                                "(config.json) nor a training workdir with an export/ directory")
    if not os.path.exists(path):
        raise FileNotFoundError(f"config.model.path={path!r}: no such file or directory")
    return path


def _sources(spec: str) -> list[str]:
    out = []
    for s in spec.split(","):
        if s.startswith("shared:"):
            s = os.path.join(data_lib.shared_data_dir(), s[len("shared:"):])
        if not os.path.exists(s):
            raise FileNotFoundError(f"config.data.prompts: no such file {s!r}")
        out.append(s)
    return out


def _load(config, mesh):
    path = resolve_model_path(config.model.path)
    overrides = {"dtype": config.model.dtype, "param_dtype": config.model.param_dtype}
    cfg = (models.gguf_config(path, **overrides) if path.endswith(".gguf")
           else models.load_hf_config(path, **overrides))
    _, abstract = nnx.split(nnx.eval_shape(lambda: models.build(cfg)))
    with nnx.logical_axis_rules(sharding.DEFAULT_RULES):
        shardings = sharding.param_shardings(abstract, mesh)
    model, cfg = models.load_pretrained(path, shardings=shardings, **overrides)
    return path, model, cfg


def _stop_ids(config, tokenizer, cfg) -> list[int]:
    if config.sample.stop_token_ids:
        return [int(i) for i in config.sample.stop_token_ids]
    ids = cfg.eos_token_id if isinstance(cfg.eos_token_id, list) else [cfg.eos_token_id]
    return sorted({i for i in [*ids, tokenizer.eos_token_id] if i is not None})


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Samples `config.sample.n` responses to every prompt; returns summary statistics."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    s = config.sample
    settings = SamplingParams(s.temperature, s.top_k, s.top_p, s.min_p)  # bad values fail early
    d = config.data
    examples, counts = data_lib.load_examples(_sources(d.prompts), d.format,
                                              on_malformed=d.on_malformed)
    prompts = data_lib.prompts_of(examples)[: d.limit or None]
    mesh = sharding.make_mesh(**config.mesh)
    path, model, cfg = _load(config, mesh)
    tokenizer = load_tokenizer(path)
    tokenized = data_lib.tokenize(prompts, tokenizer, max_length=max(s.prompt_buckets),
                                  truncation=d.truncation, counts=counts)
    with open(os.path.join(workdir, "data_counts.json"), "w") as f:
        json.dump(dict(tokenized.counts), f, indent=2)
    graphdef, params = nnx.split(model)
    sampler = make_sampler(graphdef, cfg, max_new_tokens=s.max_new_tokens,
                           prompt_buckets=tuple(s.prompt_buckets),
                           stop_token_ids=_stop_ids(config, tokenizer, cfg),
                           pad_token_id=tokenizer.pad_token_id, mesh=mesh)
    rows = tokenized.examples
    size = config.batch_size
    key = jax.random.key(config.seed)
    reasons, tokens, t0 = {r: 0 for r in FINISH_REASONS}, 0, time.time()
    bar = tqdm(total=len(rows), desc="sample", unit="prompt")
    with open(os.path.join(workdir, OUTPUT), "w") as out:
        for start in range(0, len(rows), size):
            chunk = rows[start:start + size]
            ids = [r["input_ids"] for r in chunk]
            ids += [ids[-1]] * (size - len(ids))  # one compiled batch shape
            res = jax.device_get(sampler(params, ids, jax.random.fold_in(key, start), settings,
                                         n=s.n))
            for i, row in enumerate(chunk):
                for j in range(s.n):
                    line = _line(res, i * s.n + j, row, prompts, tokenizer, sampler)
                    line["sample"] = j
                    out.write(json.dumps(line) + "\n")
                    reasons[line["finish_reason"]] += 1
                    tokens += line["num_tokens"]
            bar.update(len(chunk))
            bar.set_postfix(tok_s=f"{tokens / (time.time() - t0):.0f}")
    bar.close()
    return {"prompts": len(rows), "samples": len(rows) * s.n, "new_tokens": tokens,
            "tokens_per_s": tokens / (time.time() - t0),
            **{f"finish/{k}": v for k, v in reasons.items()},
            "output": os.path.join(workdir, OUTPUT)}


def _line(res, r: int, row, prompts, tokenizer, sampler) -> dict[str, Any]:
    n = int(res.mask_BT[r].sum())
    toks = [int(t) for t in res.tokens_BT[r, :n]]
    if toks and toks[-1] in sampler.stop_token_ids:
        toks = toks[:-1]
    ex = prompts[row["example_id"]]
    return {"example_id": int(row["example_id"]), "origin": ex.origin,
            "prompt": [dict(m) for m in ex.prompt],
            "response": tokenizer.decode(toks, skip_special_tokens=True),
            "finish_reason": FINISH_REASONS[int(res.finish_reason_B[r])], "num_tokens": n,
            "logp": float(np.sum(res.model_logps_BT[r])),
            "sample_logp": float(np.sum(res.logps_BT[r]))}
