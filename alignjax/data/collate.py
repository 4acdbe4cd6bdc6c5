"""Tokenized examples -> fixed-shape numpy batches (the field names of `alignjax.data`).

Rows are padded to a length L chosen from a short static list of bucket lengths (the smallest
that fits the longest sequence of the global batch), so a jitted step compiles once per bucket,
not once per batch. Sequences are right-padded except prompts, which are left-padded so that
generation appends on the right. A missing row (`None`, used to fill the last batch of a
finite pipeline without `drop_remainder`) is all padding with `example_id` -1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Batch = dict[str, np.ndarray]
Row = dict[str, Any] | None


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n.

    Raises:
      ValueError: n exceeds every bucket.
    """
    for b in sorted(buckets):
        if n <= b:
            return b
    raise ValueError(f"a sequence of {n} tokens exceeds the largest bucket length {max(buckets)}")


def sequence_length(kind: str, row: Row) -> int:
    """Tokens of the longest sequence of a tokenized row (0 for a missing row)."""
    if row is None:
        return 0
    if kind == "pair":
        return max(len(row["chosen_input_ids"]), len(row["rejected_input_ids"]))
    return max(len(row["input_ids"]), len(row.get("kl_input_ids", ())))


def _pad(seqs: list[np.ndarray | None], length: int, value: int, left: bool = False) -> np.ndarray:
    out = np.full((len(seqs), length), value, np.int32)
    for i, s in enumerate(seqs):
        if s is None or len(s) == 0:
            continue
        if left:
            out[i, length - len(s) :] = s
        else:
            out[i, : len(s)] = s
    return out


def _field(rows: Sequence[Row], name: str) -> list[Any]:
    return [None if r is None else r[name] for r in rows]


def _ids(rows: Sequence[Row]) -> np.ndarray:
    return np.array([-1 if r is None else r["example_id"] for r in rows], np.int32)


def _lm(rows: Sequence[Row], length: int, pad_id: int, prefix: str = "") -> Batch:
    ids = _field(rows, f"{prefix}input_ids")
    return {
        f"{prefix}input_ids": _pad(ids, length, pad_id),
        f"{prefix}attention_mask": _pad(
            [None if s is None else np.ones_like(s) for s in ids], length, 0
        ),
        f"{prefix}loss_mask": _pad(_field(rows, f"{prefix}loss_mask"), length, 0),
    }


def collate_sft(rows: Sequence[Row], length: int, pad_id: int) -> Batch:
    """input_ids, attention_mask, loss_mask [B, L]; example_id [B]."""
    return {**_lm(rows, length, pad_id), "example_id": _ids(rows)}


def collate_correction(rows: Sequence[Row], length: int, pad_id: int) -> Batch:
    """As SFT, plus correction_start [B] (index of the first correction token)."""
    start = np.array([0 if r is None else r["correction_start"] for r in rows], np.int32)
    return {**collate_sft(rows, length, pad_id), "correction_start": start}


def collate_unpaired(rows: Sequence[Row], length: int, pad_id: int) -> Batch:
    """As SFT, plus label [B] (bool: desirable) and, for rows with a mismatched completion,
    kl_input_ids, kl_attention_mask, kl_loss_mask [B, L] (KTO's KL estimate)."""
    label = np.array([False if r is None else r["label"] for r in rows], bool)
    batch = {**collate_sft(rows, length, pad_id), "label": label}
    if any(r is not None and "kl_input_ids" in r for r in rows):
        batch.update(_lm(rows, length, pad_id, "kl_"))
    return batch


def collate_pair(rows: Sequence[Row], length: int, pad_id: int) -> Batch:
    """chosen_* and rejected_* input_ids, attention_mask, loss_mask [B, L]; example_id [B]."""
    return {
        **_lm(rows, length, pad_id, "chosen_"),
        **_lm(rows, length, pad_id, "rejected_"),
        "example_id": _ids(rows),
    }


def collate_prompt(rows: Sequence[Row], length: int, pad_id: int) -> Batch:
    """Left-padded input_ids, attention_mask [B, L]; example_id [B]."""
    ids = _field(rows, "input_ids")
    mask = [None if s is None else np.ones_like(s) for s in ids]
    return {
        "input_ids": _pad(ids, length, pad_id, left=True),
        "attention_mask": _pad(mask, length, 0, left=True),
        "example_id": _ids(rows),
    }


def collate_packed(rows: Sequence[Row], length: int, pad_id: int) -> Batch:
    """input_ids, attention_mask, loss_mask, segment_ids, positions [B, L]."""
    segments = _pad(_field(rows, "segment_ids"), length, 0)
    return {
        **_lm(rows, length, pad_id),
        "segment_ids": segments,
        "positions": _pad(_field(rows, "positions"), length, 0),
    }


COLLATORS: dict[str, Callable[[Sequence[Row], int, int], Batch]] = {
    "sft": collate_sft,
    "correction": collate_correction,
    "unpaired": collate_unpaired,
    "pair": collate_pair,
    "prompt": collate_prompt,
    "packed": collate_packed,
}
