"""Raw rows from local files and Hugging Face datasets (prepared TFDS datasets: `tfds_builder`).

Every reader yields `(location, row)`: `row` is the decoded record (normally a dict) and
`location` names where it came from, for error messages: `path:line` for JSON Lines and JSON
arrays (the line on which the record starts), `path row i` for Parquet, `hf:name[split] row i`,
`tfds:name[split] row i`.

Supported local files: `.jsonl` / `.json` (an array, or one object per line), optionally
gzip-compressed (`.gz`), and `.parquet` (needs `pyarrow`).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from typing import Any

Row = tuple[str, Any]


def shared_data_dir() -> str:
    """The real data directory: `$ALIGNJAX_SHARED_DATA`, else `../shared/data` next to the repo."""
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    default = os.path.join(repo_root, "..", "shared", "data")
    return os.path.normpath(os.environ.get("ALIGNJAX_SHARED_DATA", default))


def _open_text(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _jsonl_rows(path: str, text: str) -> Iterator[Row]:
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{line_no}", json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{line_no}: invalid JSON: {e.msg} (column {e.colno})") from e


def _json_array_rows(path: str, text: str) -> Iterator[Row]:
    """Decodes a top-level JSON array element by element, tracking each element's line."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line = text.count("\n", 0, pos) + 1
    while True:
        start = pos
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        line += text.count("\n", start, pos)
        if pos >= len(text):
            raise ValueError(f"{path}:{line}: invalid JSON: unterminated array")
        if text[pos] == "]":
            return
        try:
            row, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from e
        yield f"{path}:{line}", row
        line += text.count("\n", pos, end)
        pos = end


def read_rows(path: str) -> Iterator[Row]:
    """Rows of a local JSON, JSON Lines (optionally .gz) or Parquet file.

    Args:
      path: the file. `.json` files may hold one array of records or one record per line.

    Yields:
      (location, row) pairs.

    Raises:
      FileNotFoundError: no such file.
      ValueError: undecodable JSON (naming the file and line) or an unknown extension.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such data file")
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq  # optional dependency, imported only when used

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path} row {i}", row
        return
    if not path.removesuffix(".gz").endswith((".json", ".jsonl")):
        raise ValueError(
            f"{path}: unknown data file type (expected .json[.gz], .jsonl[.gz], .parquet)"
        )
    with _open_text(path) as f:
        text = f.read()
    if text.lstrip().startswith("["):
        yield from _json_array_rows(path, text)
    else:
        yield from _jsonl_rows(path, text)


def read_hf_rows(
    name: str, *, split: str, config: str | None = None, **kwargs: Any
) -> Iterator[Row]:
    """Rows of a Hugging Face dataset by name (needs the `datasets` package and a network).

    Args:
      name: the Hub id, e.g. "Anthropic/hh-rlhf".
      split: e.g. "train" or "test[:1000]".
      config: the dataset configuration name, if any.
      **kwargs: passed to `datasets.load_dataset` (e.g. `data_dir="helpful-base"`).

    Yields:
      (location, row) pairs, location `hf:name[split] row i`.
    """
    try:
        import datasets  # optional dependency
    except ImportError as e:
        raise ImportError(
            f"hf:{name}: reading Hugging Face datasets needs `pip install datasets`"
        ) from e
    ds = datasets.load_dataset(name, config, split=split, **kwargs)
    for i, row in enumerate(ds):
        yield f"hf:{name}[{split}] row {i}", row
