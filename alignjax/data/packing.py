"""Packing SFT examples into fixed-length rows with segment ids (nothing leaks across examples).

Best-fit decreasing: examples are placed, longest first, into the open row with the least room
that still fits them, so rows come out nearly full. Packing is done once, deterministically;
the pipeline then shuffles the packed rows per epoch.

A packed row holds `input_ids`, `loss_mask`, `segment_ids` (1, 2, ... per example, 0 on
padding) and `positions` (0, 1, ... restarting at each example). The model attends only within
equal non-zero segment ids, causally, and uses the positions for RoPE, so every example sees
exactly the context it would see alone (`tests/test_data_packing.py` checks the logits).
"""

from __future__ import annotations

import bisect

import numpy as np

from alignjax.data.records import PACKED_ROWS
from alignjax.data.tokenization import TokenizedData

PACKABLE = ("sft", "correction")


def best_fit_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of total length <= `capacity` (best-fit decreasing).

    Within a bin, indices keep the order in which they were placed (longest first).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (room left, bin index)
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"example {i} has {n} tokens, more than the pack length {capacity}")
        j = bisect.bisect_left(free, (n, -1))
        if j == len(free):
            bins.append([i])
            room, b = capacity - n, len(bins) - 1
        else:
            room, b = free.pop(j)
            bins[b].append(i)
            room -= n
        if room > 0:
            bisect.insort(free, (room, b))
    return bins


def pack(data: TokenizedData, length: int) -> TokenizedData:
    """Packs SFT or correction examples into rows of at most `length` tokens.

    Args:
      data: tokenized examples of kind "sft" or "correction" (truncated to <= `length`).
      length: tokens per packed row (L of the batches).

    Returns:
      Kind "packed": per row `input_ids`, `loss_mask`, `segment_ids`, `positions` (unpadded;
      the collator pads them to `length`) and `example_ids` (the packed examples' ids). Counts
      gain `packed_rows`.
    """
    if data.kind not in PACKABLE:
        raise ValueError(f"packing needs examples of kind {PACKABLE}, got {data.kind!r}")
    lengths = [len(ex["input_ids"]) for ex in data.examples]
    rows = []
    for members in best_fit_bins(lengths, length):
        parts = [data.examples[i] for i in members]
        rows.append(
            {
                "input_ids": np.concatenate([p["input_ids"] for p in parts]),
                "loss_mask": np.concatenate([p["loss_mask"] for p in parts]),
                "segment_ids": np.concatenate(
                    [np.full(lengths[i], s, np.int32) for s, i in enumerate(members, start=1)]
                ),
                "positions": np.concatenate(
                    [np.arange(lengths[i], dtype=np.int32) for i in members]
                ),
                "example_ids": np.array([p["example_id"] for p in parts], np.int32),
            }
        )
    counts = data.counts.copy()
    counts[PACKED_ROWS] += len(rows)
    return TokenizedData("packed", rows, data.pad_id, counts)
