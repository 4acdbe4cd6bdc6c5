"""Held-out evaluation and the reference cache: in-order passes over tokenized data.

Both walk a dataset once, in order, in batches without padding rows (the last batch is just
the remaining examples), so every metric is exact over the whole set: masked means from their
sums and counts, plain means weighted by each batch's rows (`metrics.merge_weighted`).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from alignjax import data as data_lib
from alignjax import metrics as metrics_lib
from alignjax import sharding

# Batch fields that stay on the host (bookkeeping, not model inputs).
HOST_ONLY = ("example_id", "example_ids")

HostBatch = dict[str, np.ndarray]


def wilson_interval(successes: float, n: float, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a binomial proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def to_device(batch: HostBatch, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Global arrays of a batch that every process holds whole (an in-order pass): rows over the
    mesh's batch axes when they divide evenly, replicated otherwise (the short last batch)."""
    rows = len(next(iter(batch.values())))
    spec = sharding.batch_sharding(mesh)
    shards = sharding.batch_shard_count(mesh)
    target = spec if rows % shards == 0 else sharding.replicated(mesh)
    return {k: jax.make_array_from_process_local_data(target, np.asarray(v), np.shape(v))
            for k, v in batch.items() if k not in HOST_ONLY}


def in_order(data: data_lib.TokenizedData, *, batch_size: int, buckets: tuple[int, ...] = (),
             desc: str = "") -> Iterator[HostBatch]:
    """One pass over `data` in order, in batches of `batch_size` real rows (fewer in the last),
    with a progress bar (on process 0). Every process reads whole batches (`to_device`)."""
    it = data_lib.batch_iterator(data, batch_size=batch_size, shuffle=False, num_epochs=1,
                                 shard_index=0, shard_count=1,
                                 drop_remainder=False, prefetch=0,
                                 bucket_lengths=tuple(buckets) or None)
    total = -(-len(data) // batch_size)
    for batch in tqdm(it, total=total, desc=desc, unit="batch", leave=False,
                      disable=not sharding.is_main_process()):
        keep = batch["example_id"] >= 0
        yield batch if keep.all() else {k: v[keep] for k, v in batch.items()}


class ReferenceCache:
    """Reference quantities (e.g. `ref_chosen_logps`) of every example, by example id.

    Example ids are positions in the list of parsed examples, numbered before truncation drops
    some of them; the cache is indexed by id, so dropped examples leave holes that are never
    looked up.
    """

    def __init__(self, values: Mapping[str, np.ndarray], known: np.ndarray):
        self.values = dict(values)
        self.known = known

    def add_to(self, batch: HostBatch) -> HostBatch:
        ids = batch["example_id"]
        real = ids >= 0
        if not self.known[ids[real]].all():
            raise KeyError(f"no cached reference values for example ids "
                           f"{ids[real][~self.known[ids[real]]].tolist()}")
        safe = np.where(real, ids, 0)
        return {**batch, **{k: v[safe] for k, v in self.values.items()}}


def fingerprint(data: data_lib.TokenizedData, *extra: str) -> str:
    """SHA-256 of every array of every tokenized example (and of `extra` strings, e.g. the
    model's config): equal fingerprints mean the reference pass would see the same inputs."""
    h = hashlib.sha256()
    for text in extra:
        h.update(text.encode())
    for e in data.examples:
        for k in sorted(e):
            v = np.asarray(e[k])
            h.update(f"{k}:{v.dtype}:{v.shape}".encode())
            h.update(v.tobytes())
    return h.hexdigest()


def _load_cache(path: str, key: str) -> ReferenceCache | None:
    """The cache saved at `path` if it was computed from the same inputs (`key`), else None."""
    if not os.path.exists(path):
        return None
    with np.load(path, allow_pickle=False) as z:
        if str(z["fingerprint"]) != key:
            tqdm.write(f"{path}: computed from other data or another model; recomputing it")
            return None
        values = {k[len("value/"):]: z[k] for k in z.files if k.startswith("value/")}
        return ReferenceCache(values, z["known"])


def _save_cache(cache: ReferenceCache, path: str, key: str) -> None:
    """Writes the cache atomically (a temporary file, then a rename), from process 0 only."""
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, fingerprint=np.asarray(key), known=cache.known,
             **{f"value/{k}": v for k, v in cache.values.items()})
    os.replace(tmp, path)


def reference_cache(reference_fn: Callable[[Any, dict], Mapping[str, jax.Array]], params: Any,
                    data: data_lib.TokenizedData, mesh: jax.sharding.Mesh, *, batch_size: int,
                    buckets: tuple[int, ...] = (), desc: str = "reference",
                    path: str | None = None, key: str = "") -> ReferenceCache:
    """Runs `reference_fn(params, device batch) -> {name: [B]}` once over `data`, in order.

    With `path` (an .npz file), a cache saved there from the same inputs (`key`, e.g. a
    `fingerprint`) is read instead, and a newly computed one is saved there: a resumed run
    does not repeat the pass. The file holds only numeric arrays (read without pickle). Runs
    of several processes always recompute (a host without the file would otherwise skip the
    collective pass that the others run).
    """
    if jax.process_count() > 1:  # every process must run the same passes: no per-host files
        path = None
    if path is not None:
        cached = _load_cache(path, key)
        if cached is not None:
            return cached
    size = 1 + max(int(e["example_id"]) for e in data.examples)
    values: dict[str, np.ndarray] = {}
    known = np.zeros(size, bool)
    for batch in in_order(data, batch_size=batch_size, buckets=buckets, desc=desc):
        out = jax.device_get(dict(reference_fn(params, to_device(batch, mesh))))
        ids = batch["example_id"]
        for name, v in out.items():
            values.setdefault(name, np.zeros(size, np.float32))[ids] = v
        known[ids] = True
    cache = ReferenceCache(values, known)
    if path is not None:
        _save_cache(cache, path, key)
    return cache


def evaluate(eval_fn: Callable[[Any, dict], Mapping[str, jax.Array]], params: Any,
             data: data_lib.TokenizedData, mesh: jax.sharding.Mesh, *, batch_size: int,
             buckets: tuple[int, ...] = (), cache: ReferenceCache | None = None,
             prefix: str = "eval/") -> dict[str, float]:
    """Exact held-out metrics of `eval_fn(params, device batch) -> metrics` over all of `data`.

    Accuracies get their 95% Wilson interval (`<name>_ci95_low`, `<name>_ci95_high`) and a
    token NLL its perplexity.
    """
    results = []
    for batch in in_order(data, batch_size=batch_size, buckets=buckets, desc="eval"):
        if cache is not None:
            batch = cache.add_to(batch)
        out = jax.device_get(dict(eval_fn(params, to_device(batch, mesh))))
        results.append((out, len(batch["example_id"])))
    merged = metrics_lib.merge_weighted(results)
    out = {prefix + k: v for k, v in merged.items() if not k.endswith(("/sum", "/count"))}
    if f"{prefix}sft/nll" in out:
        out[f"{prefix}perplexity"] = float(np.exp(out[f"{prefix}sft/nll"]))
    for name in [k for k in out if k.endswith("/accuracy")]:
        n = len(data)
        out[f"{name}_ci95_low"], out[f"{name}_ci95_high"] = wilson_interval(out[name] * n, n)
    return out
