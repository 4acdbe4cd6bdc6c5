"""The training and held-out examples that `config.data` selects, and its tokenize arguments.

    train_ex, eval_ex, counts = split_examples(config, workdir)
    data = tokenize(train_ex, tokenizer, counts=counts, **tokenize_kwargs(config))

Sources are comma-separated files ("shared:<rel>" is relative to `readers.shared_data_dir()`),
"hf:" / "tfds:" names, or "embedded:quickstart" (`embedded.py`). Examples come back as their
format parses them; converting them for an objective (e.g. `records.as_sft`) is the caller's.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from alignjax.data.embedded import write_quickstart
from alignjax.data.load import load_examples
from alignjax.data.readers import shared_data_dir
from alignjax.data.records import TEMPLATES, Example


def resolve_sources(sources: str | Sequence[str], key: str) -> list[str]:
    """Local paths of `config.data.<key>`; "shared:<rel>" is relative to the shared data dir.

    Raises:
      FileNotFoundError naming `config.data.<key>` for a local file that does not exist.
    """
    sources = sources.split(",") if isinstance(sources, str) else list(sources)
    out = []
    for s in sources:
        if s.startswith("shared:"):
            s = os.path.join(shared_data_dir(), s[len("shared:"):])
        if ":" not in s.split(os.sep)[0] and not os.path.exists(s):
            raise FileNotFoundError(f"config.data.{key}: no such file {s!r}")
        out.append(s)
    return out


def split_examples(config, workdir: str, *, eval_counts: collections.Counter[str] | None = None
                   ) -> tuple[list[Example], list[Example], collections.Counter[str]]:
    """(train examples, held-out examples, parse counts) as `config.data` selects them.

    The parse counts are those of the training sources; the counts of a separate held-out source
    (`config.data.eval`) are added to `eval_counts` when it is given.

    The held-out examples are `config.data.eval` when set, else `eval_size` examples held out
    from the training sources: the last ones (`holdout="last"`) or a random subset
    (`holdout="random"`, `holdout_seed`). `train_size` > 0 then keeps the first that many.

    Raises:
      FileNotFoundError / ValueError naming the `config.data` key at fault.
    """
    d = config.data
    if d.train == "embedded:quickstart":
        train_sources = [write_quickstart(os.path.join(workdir, "quickstart.jsonl"))]
    else:
        train_sources = resolve_sources(d.train, "train")
    quality = {"on_malformed": d.on_malformed, "on_empty": d.on_empty}
    examples, counts = load_examples(train_sources, d.format, **quality)
    if d.eval:
        eval_examples, more = load_examples(resolve_sources(d.eval, "eval"), d.format, **quality)
        if eval_counts is not None:
            eval_counts.update(more)
    else:  # hold out `eval_size` examples: the last ones, or a random subset
        n = d.eval_size
        if n >= len(examples):
            raise ValueError(f"config.data.eval_size={n} leaves no training examples "
                             f"({len(examples)} in {train_sources})")
        if d.holdout == "random":
            order = np.random.default_rng(d.holdout_seed).permutation(len(examples))
            examples = [examples[i] for i in order]
        elif d.holdout != "last":
            raise ValueError(f"config.data.holdout={d.holdout!r}: expected 'last' or 'random'")
        examples, eval_examples = examples[:len(examples) - n], examples[len(examples) - n:]
    if d.train_size:
        examples = examples[:d.train_size]
    return examples, eval_examples, counts


def tokenize_kwargs(config) -> dict[str, Any]:
    """The truncation arguments of `data.tokenize` that `config.data` sets, and the correction
    prompt `config.data.template` ("chat" when absent; see `data.chat.correction_prompt`)."""
    d = config.data
    template = d.get("template", "chat")
    if template not in TEMPLATES:
        raise ValueError(f"config.data.template={template!r}: expected one of {TEMPLATES}")
    return {"max_length": d.max_length, "truncation": d.truncation,
            "max_prompt_length": d.max_prompt_length or None, "template": template}
