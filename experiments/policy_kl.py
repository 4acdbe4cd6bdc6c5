"""Exact per-token KL(policy || reference) of a trained run on its held-out chosen responses.

    python experiments/policy_kl.py runs/dpo --examples 200

Reads the run's config.json, rebuilds its held-out split, loads the reference (config.model.path)
and the exported policy (DIR/export), and sums over the whole vocabulary at every trained token
of the chosen responses: KL_t = sum_v pi(v | x, y_<t) (log pi(v | .) - log pi_ref(v | .)).
Prints the mean over tokens, the mean per sequence (summed over its tokens), and the mean
log-ratio log pi(y) - log pi_ref(y) of the chosen and rejected responses.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from alignjax import data as data_lib
from alignjax import models
from alignjax.logprobs import target_mask, token_logprobs


@jax.jit
def _kl_and_logps(policy_logits_BLV, ref_logits_BLV, ids_BL):
    logp = jax.nn.log_softmax(policy_logits_BLV[:, :-1].astype(jnp.float32), -1)
    logq = jax.nn.log_softmax(ref_logits_BLV[:, :-1].astype(jnp.float32), -1)
    kl_BT = jnp.sum(jnp.exp(logp) * (logp - logq), -1)
    kl_BL = jnp.pad(kl_BT, ((0, 0), (1, 0)))  # aligned with the targets, like token_logprobs
    return kl_BL, token_logprobs(policy_logits_BLV, ids_BL), token_logprobs(ref_logits_BLV, ids_BL)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir")
    p.add_argument("--examples", type=int, default=200, help="held-out pairs (the first N)")
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args()
    with open(os.path.join(args.workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    _, eval_ex, _ = data_lib.split_examples(config, args.workdir)
    path = models.resolve_path(config.model.path)
    tokenizer = models.load_tokenizer(path)
    data = data_lib.tokenize(eval_ex[: args.examples], tokenizer,
                             **data_lib.tokenize_kwargs(config))
    reference, _ = models.load_pretrained(path)
    policy, _ = models.load_pretrained(os.path.join(args.workdir, "export"))
    kl_tok, kl_seq, ratio_c, ratio_r, n_tok = 0.0, [], [], [], 0
    it = data_lib.batch_iterator(data, batch_size=args.batch, shuffle=False, num_epochs=1,
                                 drop_remainder=False, prefetch=0,
                                 bucket_lengths=tuple(config.data.buckets) or None)
    for b in tqdm(it, total=-(-len(data) // args.batch), desc="KL", unit="batch"):
        keep = b["example_id"] >= 0
        for side in ("chosen", "rejected"):
            ids, attn = b[f"{side}_input_ids"], b[f"{side}_attention_mask"]
            mask = np.asarray(target_mask(b[f"{side}_loss_mask"]))
            kl, lp, lq = jax.device_get(_kl_and_logps(policy(ids, attn), reference(ids, attn),
                                                      ids))
            ratio = ((lp - lq) * mask).sum(-1)[keep]
            (ratio_c if side == "chosen" else ratio_r).extend(ratio.tolist())
            if side == "chosen":
                kl_tok += float((kl * mask)[keep].sum())
                n_tok += int(mask[keep].sum())
                kl_seq.extend((kl * mask).sum(-1)[keep].tolist())
    print(json.dumps({"pairs": len(kl_seq), "tokens": n_tok,
                      "kl_per_token": kl_tok / n_tok, "kl_per_sequence": float(np.mean(kl_seq)),
                      "logratio_chosen": float(np.mean(ratio_c)),
                      "logratio_rejected": float(np.mean(ratio_r))}, indent=2))


if __name__ == "__main__":
    main()
