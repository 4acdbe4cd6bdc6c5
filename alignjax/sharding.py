"""Sharding: logical axis names to mesh axes. The only module that touches PartitionSpecs.

Model code names the axes of every parameter (`nnx.with_partitioning`) and of the activations at
block boundaries (`constrain`). A rules table, set with `flax.nnx.logical_axis_rules(rules)`
around tracing, maps those logical names to the axes of the mesh in context.

Logical names used by `alignjax.models`:
  parameters: vocab, embed, heads, kv_heads, mlp, norm
  activations: batch, length, embed, vocab
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax.core import spmd as flax_spmd
from jax.sharding import PartitionSpec


def logical_to_spec(logical_axes: Sequence[str | None], rules) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec through `rules` ((logical, mesh-axes) pairs)."""
    return PartitionSpec(*flax_spmd.from_sharding_rules(tuple(logical_axes), rules))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation, by logical axis names.

    A no-op unless both a rules table (`nnx.logical_axis_rules`) and a mesh (`jax.set_mesh` or
    `jax.sharding.use_mesh`) are in context, so single-device code pays nothing.
    """
    rules = flax_spmd.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, rules))
