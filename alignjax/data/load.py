"""One call from source names to parsed examples and their counts: readers, then formats.

"tfds:" sources import `tfds_builder` (and tensorflow-datasets) only when they are read.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from alignjax.data import readers
from alignjax.data.formats import parse_rows
from alignjax.data.records import Example


def _rows(
    source: str, split: str | None, data_dir: str | None, **kwargs: Any
) -> Iterator[readers.Row]:
    if source.startswith(("hf:", "tfds:")):
        scheme, name = source.split(":", 1)
        if split is None:
            raise ValueError(f"{source}: a {scheme} source needs split=")
        if scheme == "hf":
            return readers.read_hf_rows(name, split=split, **kwargs)
        if data_dir is None:
            raise ValueError(f"{source}: a tfds source needs data_dir=")
        from alignjax.data.tfds_builder import read_tfds_rows  # optional tensorflow-datasets

        return read_tfds_rows(name, split=split, data_dir=data_dir)
    if kwargs:
        raise ValueError(f"{source}: {sorted(kwargs)} only apply to hf: sources")
    return readers.read_rows(source, bad_lines="yield")


def load_examples(
    sources: str | Sequence[str],
    format: str,
    *,
    fields: Mapping[str, str] | None = None,
    on_malformed: str = "raise",
    on_empty: str = "keep",
    split: str | None = None,
    data_dir: str | None = None,
    **hf_kwargs: Any,
) -> tuple[list[Example], collections.Counter[str]]:
    """Reads and parses one or more sources of the same format.

    Args:
      sources: a local file (.json, .jsonl, .jsonl.gz, .parquet), "hf:<hub id>" (a Hugging Face
        dataset, needs `datasets` and a network), "tfds:<builder/config>" (a prepared TFDS
        dataset, see `alignjax.data.tfds_builder`), or a list of them, concatenated in order.
      format: a key of `alignjax.data.formats.FORMATS`.
      fields: field-name overrides (canonical -> row key).
      on_malformed: "raise" or "skip" (counted), for rows that are malformed or unreadable.
      on_empty: an empty response: "keep" or "drop" (counted) or "raise" (`parse_rows`).
      split: the split of an "hf:" or "tfds:" source.
      data_dir: the TFDS data directory of a "tfds:" source.
      **hf_kwargs: passed to `datasets.load_dataset`.

    Returns:
      (examples, counts).
    """
    sources = [sources] if isinstance(sources, str) else list(sources)
    examples: list[Example] = []
    counts: collections.Counter[str] = collections.Counter()
    for source in sources:
        more, counts = parse_rows(
            _rows(source, split, data_dir, **hf_kwargs),
            format,
            fields=fields,
            on_malformed=on_malformed,
            counts=counts,
            on_empty=on_empty,
        )
        examples.extend(more)
    return examples, counts
