"""Where decode time goes on a CPU: the matmuls of one SmolLM2-135M decode step, JAX and torch.

    python benchmarks/decode_matmul.py            # ~2 min

A decode step multiplies a few rows (the batch) by every weight matrix once. This script times,
in one process, for JAX (XLA:CPU, with the flags the sampler uses) and torch (eager, its default
threads): (1) float32 GEMM throughput against the number of rows M, on a 576 x 1536 matrix (one
of SmolLM2's MLP matrices, cache-resident) and on 4096 x 16384 (256 MiB, streamed from memory);
(2) the matmuls alone of one whole SmolLM2-135M decode step (30 layers of q, k, v, o, gate, up,
down, then the tied 49152 x 576 output projection) at batch 1, 8 and 32, and the step's floor:
weight bytes over the memory bandwidth measured here (a jitted sum over 1 GiB). Medians of
repeated calls after a warm-up. No model weights are read: random matrices of the same shapes.
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type="
                                   "LIBRARY_FUSION_TYPE_REDUCE")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

D, F, KV, V, LAYERS = 576, 1536, 192, 49152, 30
SHAPES = [(D, D), (D, KV), (D, KV), (D, D), (D, F), (D, F), (F, D)]


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def gemm_table() -> None:
    print("| rows M | matrix K x N | JAX GFLOP/s | torch GFLOP/s |\n|---|---|---|---|")
    f = jax.jit(lambda a, b: a @ b)
    for k, n in ((D, F), (4096, 16384)):
        w = np.random.default_rng(0).standard_normal((k, n), np.float32)
        wj, wt = jnp.asarray(w), torch.from_numpy(w)
        for m in (1, 8, 32, 64, 512):
            x = np.ones((m, k), np.float32)
            xj, xt = jnp.asarray(x), torch.from_numpy(x)
            reps = 20 if k > 1000 else 200
            tj = timed(lambda xj=xj, wj=wj: f(xj, wj).block_until_ready(), reps)
            with torch.no_grad():
                tt = timed(lambda xt=xt, wt=wt: xt @ wt, reps)
            flops = 2 * m * k * n
            print(f"| {m} | {k} x {n} | {flops / tj / 1e9:.1f} | {flops / tt / 1e9:.1f} |")


def step_table(bandwidth: float) -> None:
    rng = np.random.default_rng(1)
    ws = [[rng.standard_normal(s, np.float32) * 0.02 for s in SHAPES] for _ in range(LAYERS)]
    emb = rng.standard_normal((V, D), np.float32) * 0.02
    nbytes = sum(w.nbytes for layer in ws for w in layer) + emb.nbytes
    wj = [[jnp.asarray(w) for w in layer] for layer in ws]
    ej = jnp.asarray(emb)
    wt = [[torch.from_numpy(w) for w in layer] for layer in ws]
    et = torch.from_numpy(emb)

    def step(x, layers, e, silu, dot):
        for q, k, v, o, g, u, d in layers:
            h = dot(x, q) + 0 * (dot(x, k).sum() + dot(x, v).sum())
            x = x + dot(h, o)
            x = x + dot(silu(dot(x, g)) * dot(x, u), d)
        return dot(x, e.T)

    jstep = jax.jit(lambda x, layers, e: step(x, layers, e, jax.nn.silu, jnp.matmul))
    print(f"\nweights {nbytes / 1e6:.0f} MB; floor = bytes / {bandwidth:.1f} GB/s = "
          f"{nbytes / bandwidth / 1e6:.1f} ms per step\n")
    print("| batch | JAX matmuls ms/step | torch matmuls ms/step | floor ms | JAX / floor |")
    print("|---|---|---|---|---|")
    floor = nbytes / bandwidth / 1e6
    for b in (1, 8, 32):
        xj, xt = jnp.ones((b, D)), torch.ones(b, D)
        tj = timed(lambda xj=xj: jstep(xj, wj, ej).block_until_ready(), 10) * 1e3
        with torch.no_grad():
            tt = timed(lambda xt=xt: step(xt, wt, et, torch.nn.functional.silu, torch.matmul),
                       10) * 1e3
        print(f"| {b} | {tj:.1f} | {tt:.1f} | {floor:.1f} | {tj / floor:.2f}x |")


def bandwidth_gbs() -> float:
    x = jnp.ones((2**28,), jnp.float32)
    f = jax.jit(jnp.sum)
    return x.nbytes / min(timed(lambda: f(x).block_until_ready(), 1) for _ in range(5)) / 1e9


def main():
    start = time.time()
    print(f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
          f"XLA_FLAGS={os.environ['XLA_FLAGS']}\n")
    gemm_table()
    step_table(bandwidth_gbs())
    print(f"\nwall {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
