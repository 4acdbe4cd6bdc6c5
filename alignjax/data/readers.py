"""Raw rows from local files and Hugging Face datasets (prepared TFDS datasets: `tfds_builder`).

Every reader yields `(location, row)`: `row` is the decoded record (normally a dict) and
`location` names where it came from, for error messages: `path:line` for JSON Lines and JSON
arrays (the line on which the record starts), `path row i` for Parquet, `hf:name[split] row i`,
`tfds:name[split] row i`.

Supported local files: `.jsonl` / `.json` (an array, or one object per line), optionally
gzip-compressed (`.gz`), and `.parquet` (needs `pyarrow`).

Damage is named by file and line: a gzip file cut short or corrupt, bytes that are not UTF-8,
undecodable JSON. A damaged line of a JSON Lines file is a bad row (`read_rows(...,
bad_lines="yield")` yields it as an `UnreadableRow`, which the formats treat as a malformed row:
raised or skipped and counted); a damaged file as a whole (gzip, a JSON array) always raises.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterator
from typing import Any

from alignjax.data.records import UnreadableRow

Row = tuple[str, Any]


def shared_data_dir() -> str:
    """The real data directory: `$ALIGNJAX_SHARED_DATA`, else `../shared/data` next to the repo."""
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    default = os.path.join(repo_root, "..", "shared", "data")
    return os.path.normpath(os.environ.get("ALIGNJAX_SHARED_DATA", default))


def _read_bytes(path: str) -> bytes:
    """The bytes of a file, decompressed if it ends in .gz (every gzip member).

    Raises:
      ValueError naming the file and the line where a gzip stream is cut short or corrupt.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if not path.endswith(".gz"):
        return raw
    out: list[bytes] = []
    while raw:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out.append(d.decompress(raw))
            out.append(d.flush())
        except zlib.error as e:
            line = b"".join(out).count(b"\n") + 1
            raise ValueError(f"{path}:{line}: corrupt gzip data ({e})") from None
        if not d.eof:
            line = b"".join(out).count(b"\n") + 1
            raise ValueError(f"{path}:{line}: the gzip file is cut short (it ends inside line "
                             f"{line}); the file is damaged") from None
        raw = d.unused_data
    return b"".join(out)


def _jsonl_rows(path: str, data: bytes) -> Iterator[Row]:
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        location = f"{path}:{line_no}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield location, UnreadableRow(f"not UTF-8 (byte {e.start} of the line: "
                                          f"{raw[e.start:e.start + 4]!r})")
            continue
        try:
            yield location, json.loads(line)
        except json.JSONDecodeError as e:
            yield location, UnreadableRow(f"invalid JSON: {e.msg} (column {e.colno})")


def _decode(path: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 (byte {e.start}: "
                         f"{data[e.start:e.start + 4]!r})") from None


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


def read_rows(path: str, *, bad_lines: str = "raise") -> Iterator[Row]:
    """Rows of a local JSON, JSON Lines (optionally .gz) or Parquet file.

    Args:
      path: the file. `.json` files may hold one array of records or one record per line.
      bad_lines: what a JSON Lines line that is not UTF-8 or not JSON gives: "raise" (a
        ValueError naming the file and line) or "yield" (an `UnreadableRow` in place of the row,
        for `formats.parse_rows` to raise or skip and count).

    Yields:
      (location, row) pairs.

    Raises:
      FileNotFoundError: no such file.
      ValueError: a gzip file cut short or corrupt, bytes that are not UTF-8, undecodable JSON
        (each naming the file and line), or an unknown extension.
    """
    if bad_lines not in ("raise", "yield"):
        raise ValueError(f"bad_lines={bad_lines!r}: expected 'raise' or 'yield'")
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
    data = _read_bytes(path)
    if data.lstrip().startswith(b"["):
        yield from _json_array_rows(path, _decode(path, data))
        return
    for location, row in _jsonl_rows(path, data):
        if isinstance(row, UnreadableRow) and bad_lines == "raise":
            raise ValueError(f"{location}: {row.problem}")
        yield location, row


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
