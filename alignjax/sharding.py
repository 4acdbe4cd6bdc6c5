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


# The default rules table: FSDP shards the model width, tensor parallelism shards heads, the
# feed-forward width and the vocabulary; the batch is split over data and fsdp.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("norm", None),
)
MESH_AXES = ("data", "fsdp", "tensor")


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A (data, fsdp, tensor) mesh over all devices of all processes; -1 fills the rest.

    Raises:
      ValueError naming the config keys when the sizes do not multiply to the device count.
    """
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"config.mesh: at most one of data/fsdp/tensor may be -1, got {sizes}")
    known = 1
    for s in sizes:
        known *= s if s != -1 else 1
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"config.mesh: {len(devices)} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if sizes[0] * sizes[1] * sizes[2] != len(devices):
        raise ValueError(f"config.mesh: data*fsdp*tensor = {sizes} needs "
                         f"{sizes[0] * sizes[1] * sizes[2]} devices, found {len(devices)}")
    return jax.make_mesh(tuple(sizes), MESH_AXES, devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)


def param_shardings(abstract_state, mesh: jax.sharding.Mesh, rules=DEFAULT_RULES):
    """NamedShardings for an NNX state, from each variable's logical axis names."""
    from flax import nnx

    def one(var):
        names = var.get_metadata().get("out_sharding") or ()
        spec = logical_to_spec(names, rules) if names else PartitionSpec()
        return var.replace(jax.sharding.NamedSharding(mesh, spec))

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: jax.sharding.Mesh, rules=DEFAULT_RULES) -> jax.sharding.NamedSharding:
    """Sharding of [B, ...] batch arrays: B over the axes the rules give to 'batch'."""
    return jax.sharding.NamedSharding(mesh, logical_to_spec(("batch",), rules))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(mesh, PartitionSpec())


def state_shardings(abstract_state, params_sharding, tx, mesh: jax.sharding.Mesh):
    """Shardings of a `steps.TrainState`: optimiser moments follow their parameters.

    Args:
      abstract_state: `jax.eval_shape` of `steps.init_state`.
      params_sharding: the parameters' shardings (e.g. `jax.tree.map(lambda x: x.sharding, p)`).
      tx: the optax transformation that built `abstract_state.opt_state`.
      mesh: the mesh; everything that is not a parameter copy (counts, RNG) is replicated.
    """
    import optax

    rep = replicated(mesh)
    opt = optax.tree_utils.tree_map_params(tx, lambda _, s: s, abstract_state.opt_state,
                                           params_sharding, transform_non_params=lambda _: rep)
    return abstract_state.replace(step=rep, params=params_sharding, opt_state=opt, rng=rep)


def batch_shard_count(mesh: jax.sharding.Mesh, rules=DEFAULT_RULES) -> int:
    """How many shards the batch axis of `batch_sharding(mesh)` is split into."""
    spec = logical_to_spec(("batch",), rules)[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
    count = 1
    for axis in axes:
        count *= mesh.shape[axis]
    return count
