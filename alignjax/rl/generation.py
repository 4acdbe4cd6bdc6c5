"""Text in, text out: prompts of the sentiment task, batched sampling, JSONL files, intervals.

The pieces the jobs that sample and score text share (`alignjax.online_dpo`,
`alignjax.rl.best_of_n`, `alignjax.rejection_sampling`): `prompts_of` splits the embedded
movie-review openings into training and held-out prompts, `Generator` samples continuations of
them in fixed-size compiled batches and decodes them, `write_jsonl` / `read_jsonl` keep the
stages' outputs (written whole or not at all), and `mean_interval` is the 95% interval of a mean.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from alignjax import data as data_lib
from alignjax import models, objectives, sampler, sharding
from alignjax.data import sentiment


def prompts_of(config) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts) as `config.prompts` selects them.

    The openings are shuffled with `config.data.holdout_seed`; the first `config.eval_prompts`
    are held out and the next `config.train_prompts` (0: all the rest) are for training.
    """
    if config.prompts != "embedded:movie_openings":
        raise ValueError(f"config.prompts={config.prompts!r}: expected "
                         "'embedded:movie_openings'")
    order = np.random.default_rng(config.data.holdout_seed).permutation(
        len(sentiment.OPENINGS))
    openings = [sentiment.OPENINGS[i] for i in order]
    n = config.eval_prompts
    if not 0 < n < len(openings):
        raise ValueError(f"config.eval_prompts={n}: expected 0 < n < {len(openings)}")
    train_openings = openings[n:][:config.train_prompts or None]
    return train_openings, openings[:n]


def user_turn(opening: str) -> str:
    """The user turn the policy answers for a movie-review opening (`sentiment.review_prompt`)."""
    return sentiment.review_prompt(opening)[0]["content"]


class Generator:
    """Samples text continuations of prompts in fixed-size compiled batches.

    Settings from the config: `max_new_tokens`, `prompt_buckets`, `sample_batch` (prompts per
    compiled call; the last batch is padded with copies of its last prompt), `temperature`,
    `top_k`, `top_p`.
    """

    @classmethod
    def from_config(cls, config) -> tuple[Generator, nnx.GraphDef, object]:
        """(generator, graphdef, parameters) of `config.model` on the mesh `config.mesh`."""
        mesh = sharding.make_mesh(**config.mesh)
        model, cfg, tokenizer = models.load(config.model, mesh)
        graphdef, params = nnx.split(model)
        return cls(config, graphdef, cfg, tokenizer, mesh), graphdef, params

    def __init__(self, config, graphdef, cfg, tokenizer, mesh):
        self.tokenizer, self.mesh = tokenizer, mesh
        renderer = data_lib.ChatRenderer(tokenizer)
        self.encode = lambda text: tokenizer(
            renderer.prompt(sentiment.review_prompt(text)),
            add_special_tokens=False).input_ids
        stops = sorted({*sampler._as_list(cfg.eos_token_id),
                        *sampler._as_list(tokenizer.eos_token_id)})
        self.sampler = sampler.make_sampler(
            graphdef, cfg, max_new_tokens=config.max_new_tokens,
            prompt_buckets=tuple(config.prompt_buckets), stop_token_ids=stops,
            pad_token_id=tokenizer.pad_token_id, mesh=mesh)
        self.settings = sampler.SamplingParams(temperature=config.temperature,
                                               top_k=config.top_k, top_p=config.top_p)
        self.batch = config.sample_batch
        graph = graphdef
        self.ref_logps = sharding.under(mesh, jax.jit(
            lambda p, b: objectives.token_logps(nnx.merge(graph, p), b)))

    def __call__(self, params, openings: list[str], *, n: int, seed: int, ref_params=None,
                 desc: str = "sample") -> list[dict]:
        """One row per sample (prompt-major: row i * n + j is sample j of opening i): prompt
        (the opening), response text (stop token excluded), finish reason, response tokens,
        `logp` (the response's log-prob under the model at temperature 1) and, with
        `ref_params`, `ref_logp` (the same under the reference)."""
        rows = []
        ids = [self.encode(o) for o in openings]
        for start in tqdm(range(0, len(ids), self.batch), desc=desc, unit="batch", leave=False):
            chunk = ids[start:start + self.batch]
            real = len(chunk)
            chunk = chunk + [chunk[-1]] * (self.batch - real)
            out = self.sampler(params, chunk, jax.random.fold_in(jax.random.key(seed), start),
                               self.settings, n=n)
            ref = None
            if ref_params is not None:
                batch = out.batch()
                ref_tok = self.ref_logps(ref_params, batch)
                ref = np.asarray(jax.device_get((ref_tok * batch["loss_mask"]).sum(axis=1)))
            host = jax.device_get(out)
            reasons = out.finish_reasons()
            for r in range(real * n):
                length = int(host.mask_BT[r].sum())
                toks = [int(t) for t in host.tokens_BT[r, :length]]
                if toks and toks[-1] in self.sampler.stop_token_ids:
                    toks = toks[:-1]
                rows.append({
                    "prompt": openings[start + r // n],
                    "response": self.tokenizer.decode(toks, skip_special_tokens=True),
                    "finish_reason": reasons[r], "tokens": length,
                    "logp": float(host.model_logps_BT[r].sum()),
                    **({"ref_logp": float(ref[r])} if ref is not None else {})})
        return rows


def write_jsonl(path: str, rows: list[dict]) -> None:
    """Writes `rows` as JSON lines, whole or not at all (a temporary file, then a rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, path)


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def mean_interval(x: np.ndarray) -> tuple[float, float, float]:
    """Mean and its 95% normal interval (infinite for a single value)."""
    x = np.asarray(x, np.float64)
    half = 1.959964 * x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else float("inf")
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)
