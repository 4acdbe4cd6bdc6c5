"""The grain pipeline: shuffle by seed, epochs, per-host shards, padding to buckets, prefetch.

    source (tokenized or packed examples)
      -> shuffle(seed)             a new permutation each epoch (grain mixes in the epoch)
      -> repeat(num_epochs)        None = forever
      -> batch(global batch size)  one global batch = batch_size consecutive examples
      -> this host's rows          rows shard_index, shard_index + shard_count, ... of it,
                                   or the block `rows` = [start, stop) (the rows this host's
                                   devices hold, `alignjax.sharding.host_rows`), padded to the
                                   bucket of the *global* batch's longest row, so every host
                                   builds the same shapes
      -> background prefetch       threads (and optionally processes) fill a buffer ahead

Everything before the prefetch is random access (a grain `MapDataset`), so the iterator state
is one index, JSON-serialisable (`json.dumps(it.get_state())`), and `set_state` resumes at
exactly the next batch. With several hosts the union of their batches at step t is the
single-host global batch t: hosts see disjoint shards that together are the whole data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
from absl import flags

from alignjax.data.collate import COLLATORS, Batch, Row, bucket_length, sequence_length
from alignjax.data.tokenization import TokenizedData


@dataclasses.dataclass(frozen=True)
class HostBatch:
    """Collates this host's rows of a global batch (picklable, for grain worker processes)."""

    kind: str
    pad_id: int
    buckets: tuple[int, ...]
    shard_index: int
    shard_count: int
    rows_per_host: int
    block: tuple[int, int] | None = None

    def __call__(self, rows: Sequence[Row]) -> Batch:
        length = bucket_length(max(sequence_length(self.kind, r) for r in rows), self.buckets)
        if self.block is not None:
            mine = list(rows[self.block[0] : self.block[1]])
        else:
            mine = list(rows[self.shard_index :: self.shard_count])
        mine += [None] * (self.rows_per_host - len(mine))
        return COLLATORS[self.kind](mine, length, self.pad_id)


def steps_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool = True) -> int:
    """Global batches per epoch."""
    return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def _default_shard() -> tuple[int, int]:
    import jax  # imported here: the rest of alignjax.data does not need jax

    return jax.process_index(), jax.process_count()


def batch_dataset(
    data: TokenizedData,
    *,
    batch_size: int,
    seed: int = 0,
    num_epochs: int | None = 1,
    shuffle: bool = True,
    bucket_lengths: Sequence[int] | None = None,
    drop_remainder: bool = True,
    shard_index: int | None = None,
    shard_count: int | None = None,
    rows: tuple[int, int] | None = None,
    prefetch: int = 4,
    num_threads: int = 1,
    worker_count: int = 0,
) -> grain.IterDataset:
    """A grain dataset of this host's batches (dicts of numpy arrays, see `alignjax.data`).

    Args:
      data: from `alignjax.data.tokenization` or `alignjax.data.pack`.
      batch_size: the global batch size B; each host gets B / shard_count rows.
      seed: shuffle seed (same on every host).
      num_epochs: passes over the data; None repeats forever.
      shuffle: shuffle the examples (a new order each epoch).
      bucket_lengths: the allowed padded lengths L; default one bucket, the longest example.
        Give the same list to train and eval pipelines to share compiled shapes.
      drop_remainder: drop the last, partial global batch; otherwise it is filled with
        all-padding rows (`example_id` -1), keeping the batch shape.
      shard_index: this host's shard (default `jax.process_index()`).
      shard_count: the number of hosts (default `jax.process_count()`).
      rows: instead of shard_index / shard_count, this host's block [start, stop) of every
        global batch (`alignjax.sharding.host_rows(mesh, batch_size)`).
      prefetch: batches prepared ahead by background threads (0: none).
      num_threads: background threads that collate batches.
      worker_count: if > 0, also prefetch in that many worker processes.

    Returns:
      An `IterDataset`; `iter()` of it gives a `grain.DatasetIterator` with `get_state` /
      `set_state`.
    """
    if rows is not None:
        if not 0 <= rows[0] < rows[1] <= batch_size:
            raise ValueError(f"rows={rows} is not a block of a batch of {batch_size}")
        shard_index, shard_count = 0, 1
    if shard_index is None or shard_count is None:
        default_index, default_count = _default_shard()
        shard_index = default_index if shard_index is None else shard_index
        shard_count = default_count if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index} is not in [0, shard_count={shard_count})")
    if batch_size % shard_count:
        raise ValueError(f"batch_size={batch_size} is not divisible by shard_count={shard_count}")
    if len(data) == 0:
        raise ValueError(f"no {data.kind} examples to batch (counts: {dict(data.counts)})")
    longest = max(sequence_length(data.kind, r) for r in data.examples)
    buckets = tuple(sorted(bucket_lengths)) if bucket_lengths else (longest,)
    bucket_length(longest, buckets)  # fails early, not at some batch in the middle of training
    ds = grain.MapDataset.source(data.examples)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    ds = ds.batch(
        batch_size,
        drop_remainder=drop_remainder,
        batch_fn=HostBatch(
            data.kind, data.pad_id, buckets, shard_index, shard_count,
            batch_size // shard_count if rows is None else rows[1] - rows[0],
            None if rows is None else (int(rows[0]), int(rows[1])),
        ),
    )
    ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    )
    if worker_count > 0:
        # grain 0.2.18's worker processes read an absl flag, which fails unless flags were
        # parsed (absl.app does that); outside absl.app, use the defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return ds


def batch_iterator(data: TokenizedData, **kwargs: Any) -> grain.DatasetIterator:
    """`iter(batch_dataset(data, **kwargs))`: batches with `get_state()` / `set_state()`."""
    return iter(batch_dataset(data, **kwargs))
