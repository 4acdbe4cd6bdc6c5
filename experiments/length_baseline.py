"""Accuracy of "the longer response is chosen" on a run's pairs: the baseline an RM must beat.

    python experiments/length_baseline.py runs/rm

Reads the run's config.json, rebuilds its training and held-out splits, tokenizes them as the
run did, and counts response tokens (the trained tokens, EOS included) of the chosen and the
rejected response, both as the run saw them (after `config.data.max_length` truncation) and
whole. A pair of equal lengths counts one half. Prints accuracy with its 95% Wilson interval.
"""

from __future__ import annotations

import argparse
import json
import os

import ml_collections
import numpy as np

from alignjax import data as data_lib
from alignjax import evaluate, models


def length_accuracy(data: data_lib.TokenizedData) -> np.ndarray:
    """Per pair: 1 if the chosen response has more trained tokens, 0.5 on a tie, else 0."""
    c = np.array([int(e["chosen_loss_mask"].sum()) for e in data.examples])
    r = np.array([int(e["rejected_loss_mask"].sum()) for e in data.examples])
    return np.where(c == r, 0.5, (c > r).astype(float))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir", help="a run directory holding config.json")
    args = p.parse_args()
    with open(os.path.join(args.workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    train_ex, eval_ex, _ = data_lib.split_examples(config, args.workdir)
    tokenizer = models.load_tokenizer(models.resolve_path(config.model.path))
    print("| split | pairs | lengths | longer-is-chosen accuracy (95% CI) |\n|---|---|---|---|")
    for name, examples in (("train", train_ex), ("held-out", eval_ex)):
        for label, kwargs in (
            (f"as trained ({config.data.max_length} tokens)", data_lib.tokenize_kwargs(config)),
            ("whole", {"max_length": 1 << 20}),
        ):
            acc = length_accuracy(data_lib.tokenize(examples, tokenizer, **kwargs))
            lo, hi = evaluate.wilson_interval(acc.sum(), len(acc))
            print(f"| {name} | {len(acc):,} | {label} | "
                  f"{acc.mean():.1%} ({lo:.1%}-{hi:.1%}) |")


if __name__ == "__main__":
    main()
