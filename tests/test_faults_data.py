"""Malformed data files: every fault is named by file and line, or skipped and counted."""

from __future__ import annotations

import gzip
import json
import re
import zlib

import pytest

from alignjax.data import readers, records
from alignjax.data.load import load_examples

GOOD = [{"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"}
        for i in range(4)]

# Line 3 of a four-line JSON Lines file, and the error that names it.
BAD_LINES = {
    "bad_json": (b'{"prompt": "q", "chosen": "a", "rejected": ', r"invalid JSON"),
    "missing_field": (b'{"prompt": "q", "chosen": "a"}', r"field 'rejected': missing"),
    "wrong_type": (b'{"prompt": "q", "chosen": 3, "rejected": "b"}',
                   r"field 'chosen': expected str/list, got int"),
    "not_an_object": (b'["q", "a", "b"]', r"field '<row>': expected an object, got list"),
    "non_utf8": (b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}', r"not UTF-8"),
    "empty_response": (b'{"prompt": "q", "chosen": "  ", "rejected": "b"}',
                       r"field 'chosen': empty"),
}


def _file(tmp_path, bad: bytes, name: str = "pairs.jsonl") -> str:
    lines = [json.dumps(r).encode() for r in GOOD]
    lines.insert(2, bad)
    path = tmp_path / name
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return str(path)


@pytest.mark.parametrize("fault", sorted(BAD_LINES))
def test_a_bad_line_is_named_or_skipped_and_counted(tmp_path, fault):
    bad, message = BAD_LINES[fault]
    path = _file(tmp_path, bad, "pairs.jsonl.gz" if fault == "non_utf8" else "pairs.jsonl")
    strict = {"on_empty": "raise"} if fault == "empty_response" else {}
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: ") + ".*" + message):
        load_examples(path, "preference", **strict)
    if fault == "empty_response":
        examples, counts = load_examples(path, "preference", on_empty="drop")
        assert counts[records.EMPTY_DROPPED] == 1
        kept, kept_counts = load_examples(path, "preference")  # the default keeps it, counted
        assert len(kept) == 5 and kept_counts[records.EMPTY_KEPT] == 1
    else:
        examples, counts = load_examples(path, "preference", on_malformed="skip")
        assert counts[records.MALFORMED_SKIPPED] == 1
    assert [e.origin for e in examples] == [f"{path}:{n}" for n in (1, 2, 4, 5)]
    assert counts[records.ROWS] == 5 and counts[records.EXAMPLES] == 4


def test_reader_alone_raises_on_a_bad_line(tmp_path):
    path = _file(tmp_path, BAD_LINES["non_utf8"][0])
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: not UTF-8")):
        list(readers.read_rows(path))
    rows = list(readers.read_rows(path, bad_lines="yield"))
    assert isinstance(rows[2][1], records.UnreadableRow) and len(rows) == 5


def _complete_lines(data: bytes) -> int:
    """Newline-terminated lines that a plain streaming decompressor gets out of `data`."""
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data).count(b"\n")


@pytest.mark.parametrize("on_malformed", ["raise", "skip"])
def test_a_gzip_file_cut_short_names_file_and_line(tmp_path, on_malformed):
    rows = [{"prompt": f"q{i} " + "x" * 200, "chosen": f"c{i}", "rejected": f"r{i}"}
            for i in range(40)]
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    cut = data[: len(data) * 2 // 3]
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(cut)
    line = _complete_lines(cut) + 1
    assert 1 < line < 40
    # A damaged file is never trained on in part, whatever on_malformed says.
    with pytest.raises(ValueError, match=re.escape(f"{path}:{line}: the gzip file is cut short")):
        load_examples(str(path), "preference", on_malformed=on_malformed)


def test_corrupt_gzip_and_json_array_faults_name_the_file(tmp_path):
    data = bytearray(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in GOOD)))
    data[len(data) // 2] ^= 0xFF  # a flipped byte in the deflate stream (or its checksum)
    path = tmp_path / "flipped.jsonl.gz"
    path.write_bytes(bytes(data))
    damaged = re.escape(str(path)) + r":\d+: (corrupt gzip|.*cut short)"
    with pytest.raises(ValueError, match=damaged):
        load_examples(str(path), "preference", on_malformed="skip")

    array = tmp_path / "rows.json"
    array.write_bytes(b'[\n {"prompt": "a", "chosen": "b", "rejected": "c"},\n'
                      b' {"prompt": "\xff", "chosen": "b", "rejected": "c"}\n]\n')
    with pytest.raises(ValueError, match=re.escape(f"{array}:3: not UTF-8")):
        load_examples(str(array), "preference")
    array.write_bytes(b'[\n {"prompt": "a", "chosen": "b", "rejected": "c"},\n {"prompt": \n')
    with pytest.raises(ValueError, match=re.escape(f"{array}:") + r"\d+: invalid JSON"):
        load_examples(str(array), "preference")
