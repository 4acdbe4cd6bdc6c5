"""How far float32 log-probs move with the shape of the computation, on SmolLM2-135M-Instruct.

    python experiments/logprob_noise_floor.py            # ~5 min on 2 CPU cores

The sampler's log-probs come from one-token decode steps over a KV cache; the trainer's from a
full forward over whole sequences. In float32 the two round differently (other matrix shapes,
other summation orders). This script puts that difference beside the trainer's own: the same
sequences scored by the trainer's `objectives.token_logps` in one batch of 8, one row at a time,
and with 32 more padding columns. It prints the max absolute difference of the response tokens'
log-probs for each pair, over 8 chat prompts with 32 sampled tokens each (temperature 1).

Then the cause: XLA:CPU's float32 matrix product of M rows by one of the model's matrices,
against the same rows computed inside a product of 512 rows (max absolute difference; 0 means
bit-identical). A decode step multiplies only the batch's rows (M = 8 here); a full forward
multiplies batch x length rows.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from flax import nnx

from alignjax import models, objectives
from alignjax.assets import smollm2_gguf_path
from alignjax.sampler import SamplingParams, make_sampler

CHATS = [
    "What is the capital of France? Answer in one word.",
    "Say hello.",
    "Write a haiku about the sea.",
    "How do I reverse a list in Python?",
    "Explain photosynthesis to a ten-year-old in two sentences.",
    "Give me three tips for a job interview, briefly.",
    "Name a primary colour. One word.",
    "What is 2 + 2? Reply with the number only.",
]


def main():
    start = time.time()
    model, cfg = models.load_gguf(smollm2_gguf_path())
    tok = models.load_tokenizer(smollm2_gguf_path())
    graphdef, params = nnx.split(model)
    ids = [tok(tok.apply_chat_template([{"role": "user", "content": c}], tokenize=False,
                                       add_generation_prompt=True),
               add_special_tokens=False).input_ids for c in CHATS]
    sampler = make_sampler(graphdef, cfg, max_new_tokens=32, prompt_buckets=(64,),
                           stop_token_ids=(tok.eos_token_id,), pad_token_id=tok.pad_token_id)
    out = sampler(params, ids, jax.random.key(0), SamplingParams(1.0))
    batch = {k: np.asarray(v) for k, v in out.batch().items()}
    mask = np.asarray(out.mask_BT, bool)
    p = batch["input_ids"].shape[1] - mask.shape[1]
    score = jax.jit(lambda prm, b: objectives.token_logps(nnx.merge(graphdef, prm), b))

    def trainer(b):
        return np.asarray(score(params, b))[:, p:p + mask.shape[1]]

    whole = trainer(batch)
    rows = np.concatenate([trainer({k: v[i:i + 1] for k, v in batch.items()})
                           for i in range(len(ids))])
    pad = {k: np.pad(v, ((0, 0), (0, 32)), constant_values=tok.pad_token_id if k == "input_ids"
                     else 0) for k, v in batch.items()}
    padded = trainer(pad)
    sampled = np.asarray(out.model_logps_BT)

    def d(a, b):
        return float(np.abs(a - b)[mask].max())

    print(f"{int(mask.sum())} response tokens, 8 rows; max |difference| of token log-probs:\n")
    print("| pair | max abs difference |\n|---|---|")
    print(f"| sampler (KV cache) vs trainer, batch of 8 | {d(sampled, whole):.2e} |")
    print(f"| trainer batch of 8 vs trainer one row at a time | {d(whole, rows):.2e} |")
    print(f"| trainer batch of 8 vs trainer, 32 more padding columns | {d(whole, padded):.2e} |")
    print(f"| sampler vs trainer one row at a time | {d(sampled, rows):.2e} |")
    rng = np.random.default_rng(0)
    f = jax.jit(lambda a, b: a @ b)
    print("\n| M rows | 576 x 1536 | 1536 x 576 | 576 x 49152 |\n|---|---|---|---|")
    mats = [rng.standard_normal(s, np.float32) for s in ((576, 1536), (1536, 576), (576, 49152))]
    xs = [rng.standard_normal((512, w.shape[0]), np.float32) for w in mats]
    full = [np.asarray(f(x, w)) for x, w in zip(xs, mats, strict=True)]
    for m in (1, 2, 8, 16, 32, 56, 63, 64, 128):
        cells = [float(np.abs(np.asarray(f(x[:m], w)) - y[:m]).max())
                 for x, w, y in zip(xs, mats, full, strict=True)]
        print(f"| {m} | " + " | ".join(f"{c:.1e}" for c in cells) + " |")
    print(f"\nwall {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
