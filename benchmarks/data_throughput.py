"""Throughput of the data pipeline against what a training step consumes.

    python benchmarks/data_throughput.py                       # measures a tiny model's step
    python benchmarks/data_throughput.py --train-steps-per-s 2 # or: compare with a given rate

Stages, on the real files of shared/data (HH-RLHF: the four test splits, 8,552 rows; AlpacaEval
reference outputs, 805 rows) with the SmolLM2 tokenizer:

  read+parse  JSON(.gz) -> examples                     (rows/s)
  tokenize    chat template, token ids, masks, truncation  (examples/s, tokens/s)
  pack        best-fit packing of SFT examples          (examples/s)
  batches     shuffle, shard, pad to buckets, collate, background prefetch
              (batches/s, examples/s, real tokens/s; real = attention_mask == 1)

The train-step rate is either `--train-steps-per-s` or, by default, measured here: a jitted
forward + backward + SGD update of `alignjax.models.tiny_config("llama")` on one batch of the
most frequent shape (pairs: chosen and rejected concatenated, [2B, L]). The last column says
how many times faster the pipeline produces batches than that step consumes them (> 1: the
input pipeline is not the bottleneck). Tokenization is a one-off pass before training.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from alignjax import data
from alignjax.assets import smollm2_gguf_path
from alignjax.models import load_tokenizer

HH_FILES = [
    f"hh-rlhf/{s}/test.jsonl.gz"
    for s in ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
]
ALPACA = "alpaca_eval/alpaca_eval_reference_gpt4_1106_preview.json"


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def iterate(
    td: data.TokenizedData, args: argparse.Namespace, buckets: tuple[int, ...]
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Times `args.batches` batches; returns a batch of the most frequent length and the rates."""
    it = data.batch_iterator(
        td,
        batch_size=args.batch_size,
        seed=0,
        num_epochs=None,
        bucket_lengths=buckets,
        shard_index=0,
        shard_count=1,
        prefetch=args.prefetch,
        num_threads=args.threads,
    )
    next(it)  # starts the prefetch threads
    by_length: dict[int, tuple[int, dict[str, np.ndarray]]] = {}
    start, real = time.perf_counter(), 0
    for _ in range(args.batches):
        batch = next(it)
        real += sum(int(v.sum()) for k, v in batch.items() if k.endswith("attention_mask"))
        length = next(iter(batch.values())).shape[1]
        by_length[length] = (by_length.get(length, (0, batch))[0] + 1, batch)
    seconds = time.perf_counter() - start
    _, typical = max(by_length.values(), key=lambda v: v[0])
    return typical, {
        "batches/s": args.batches / seconds,
        "examples/s": args.batches * args.batch_size / seconds,
        "tokens/s": real / seconds,
    }


def train_step_rate(batch: dict[str, np.ndarray], steps: int) -> float:
    """Steps/s of a jitted forward + backward + SGD update of a tiny model on `batch`.

    The model is `tiny_config("llama")` (2 layers, D=64, V=256; ids are taken modulo V): its
    step is faster than any real model's, so pipeline/step ratios are conservative.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from alignjax import models
    from alignjax.logprobs import masked_mean, token_logprobs

    sides = ["chosen_", "rejected_"] if "chosen_input_ids" in batch else [""]
    # Pairs: one forward pass over chosen and rejected, as the DPO / reward-model steps do.
    ids, att, mask = (
        np.concatenate([batch[f"{s}{k}"] for s in sides])
        for k in ("input_ids", "attention_mask", "loss_mask")
    )
    extra = (
        {"segment_ids_BL": batch["segment_ids"], "positions_BL": batch["positions"]}
        if ("segment_ids" in batch)
        else {}
    )
    cfg = models.tiny_config(family="llama")
    graphdef, params = nnx.split(models.Transformer(cfg, rngs=nnx.Rngs(0)))

    @jax.jit
    def step(params, ids, att, mask, extra):
        def loss_fn(p):
            logits = nnx.merge(graphdef, p)(ids, att, **extra)
            return -masked_mean(token_logprobs(logits, ids), mask)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        return jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads), loss

    inputs = (
        jnp.asarray(ids % cfg.vocab_size),
        jnp.asarray(att),
        jnp.asarray(mask),
        jax.tree.map(jnp.asarray, extra),
    )
    params, loss = step(params, *inputs)  # compile
    loss.block_until_ready()
    start = time.perf_counter()
    for _ in range(steps):
        params, loss = step(params, *inputs)
    loss.block_until_ready()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batches", type=int, default=200, help="batches timed per pipeline")
    parser.add_argument("--prefetch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--train-steps-per-s",
        type=float,
        default=None,
        help="train-step rate to compare with (default: measure a tiny model)",
    )
    parser.add_argument("--train-steps", type=int, default=3, help="steps timed when measuring")
    args = parser.parse_args()
    root = data.shared_data_dir()
    buckets = (args.max_length // 4, args.max_length // 2, args.max_length)
    tok, t_tok = timed(lambda: load_tokenizer(smollm2_gguf_path()))
    print(
        f"tokenizer loaded in {t_tok:.1f} s; data from {root}; B={args.batch_size}, "
        f"buckets={buckets}, prefetch={args.prefetch}, threads={args.threads}\n"
    )

    rows: list[tuple[str, str, float, float | None]] = []  # (stage, dataset, examples/s, tokens/s)
    (pairs, counts), t = timed(
        lambda: data.load_examples([os.path.join(root, f) for f in HH_FILES], "hh_rlhf")
    )
    rows.append(("read+parse", "hh_rlhf", counts["rows"] / t, None))
    (sft, sft_counts), t = timed(
        lambda: data.load_examples(os.path.join(root, ALPACA), "alpaca_eval")
    )
    rows.append(("read+parse", "alpaca_eval", sft_counts["rows"] / t, None))

    results = {}
    for name, examples in (("hh_rlhf pairs", pairs), ("alpaca_eval sft", sft)):
        td, t = timed(lambda ex=examples: data.tokenize(ex, tok, max_length=args.max_length))
        tokens = sum(len(v) for r in td.examples for k, v in r.items() if k.endswith("input_ids"))
        rows.append(("tokenize", name, len(examples) / t, tokens / t))
        results[name] = td
    packed, t = timed(lambda: data.pack(results["alpaca_eval sft"], args.max_length))
    rows.append(("pack", "alpaca_eval sft", len(results["alpaca_eval sft"]) / t, None))
    results["alpaca_eval packed"] = packed

    print(f"{'stage':<11} {'data':<19} {'examples/s':>11} {'tokens/s':>11}")
    for stage, name, ex_s, tok_s in rows:
        tok_text = "-" if tok_s is None else f"{tok_s:,.0f}"
        print(f"{stage:<11} {name:<19} {ex_s:>11,.0f} {tok_text:>11}")

    print(
        f"\n{'batches':<19} {'shape':>10} {'batches/s':>10} {'examples/s':>11} "
        f"{'tokens/s':>11} {'step/s':>8} {'pipeline/step':>13}"
    )
    for name, td in results.items():
        first, rate = iterate(td, args, (args.max_length,) if td.kind == "packed" else buckets)
        step_rate = args.train_steps_per_s or train_step_rate(first, args.train_steps)
        shape = "x".join(map(str, next(iter(first.values())).shape))
        print(
            f"{name:<19} {shape:>10} {rate['batches/s']:>10,.1f} {rate['examples/s']:>11,.0f} "
            f"{rate['tokens/s']:>11,.0f} {step_rate:>8.2f} "
            f"{rate['batches/s'] / step_rate:>12,.0f}x"
        )
    print("\n(examples/s of packed batches counts packed rows; tokens/s counts real tokens)")


if __name__ == "__main__":
    main()
