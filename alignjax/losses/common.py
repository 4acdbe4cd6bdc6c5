"""Metric conventions shared by the losses, and their exact merge over micro-batches.

Every loss returns `(loss, metrics)` with `metrics: dict[str, Array]` of scalars under fixed
names (`dpo/accuracy`, `ppo/clipfrac`, ...). A metric that is a *masked* mean (over tokens, or
over a subset of the batch) is emitted as three entries,

    name          the mean on this batch (sum / max(count, 1): 0, never NaN, when empty)
    name/sum      the masked sum
    name/count    the number of unmasked entries

so that `merge_metrics` recovers the exact mean over all micro-batches of an accumulated step
(sum of sums / sum of counts), not a mean of means. Other metrics are plain batch means and are
averaged, which is exact for equal-size micro-batches.

Token-mean losses also take `normalizer`: the number of trained tokens in the *whole*
accumulated batch. With it each micro-batch returns sum / normalizer, so the micro-batch losses
(and their gradients) add up to the exact global token mean.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp

from alignjax.logprobs import Array, as_float, masked_count, masked_sum

Metrics = dict[str, Array]


def masked_mean_metric(name: str, x: Array, mask: Array) -> Metrics:
    """`{name: mean, name/sum: sum, name/count: count}` of `x` over `mask`."""
    total = masked_sum(x, mask)
    count = masked_count(mask)
    return {name: total / jnp.maximum(count, 1.0), f"{name}/sum": total, f"{name}/count": count}


def sum_metric(name: str, total: Array, count: Array) -> Metrics:
    """`{name: total / count, name/sum: total, name/count: count}`: a mean that merges exactly.

    Losses divided by a normaliser of the whole accumulated batch report themselves this way,
    so the metric of a micro-batched step is the whole batch's mean, not a mean of shares.
    """
    total = jnp.asarray(total)
    count = jnp.asarray(count, total.dtype)
    return {name: total / jnp.maximum(count, 1.0), f"{name}/sum": total, f"{name}/count": count}


def normalize(total: Array, count: Array, normalizer: float | Array | None) -> Array:
    """total / normalizer if given, else total / max(count, 1) (0 for an empty batch)."""
    if normalizer is None:
        return total / jnp.maximum(count, 1.0)
    return total / as_float(jnp.asarray(normalizer))


def merge_metrics(stacked: Metrics) -> Metrics:
    """Merges metrics of N micro-batches stacked along a leading axis, exactly.

    Args:
      stacked: `{name: array of shape (N,)}`, e.g. the metrics output of a `jax.lax.scan` over
        micro-batches, or `jax.tree.map(lambda *m: jnp.stack(m), *metrics_list)`.

    Returns:
      Scalars: `name/sum` and `name/count` are summed and `name` recomputed from them; every
      other metric is averaged over the micro-batches.
    """
    merged = {}
    for name, values in stacked.items():
        chex.assert_rank(values, 1)
        if name.endswith(("/sum", "/count")):
            merged[name] = jnp.sum(values)
        else:
            merged[name] = jnp.mean(values)
    for name in merged:
        if f"{name}/sum" in merged and f"{name}/count" in merged:
            merged[name] = merged[f"{name}/sum"] / jnp.maximum(merged[f"{name}/count"], 1.0)
    return merged
