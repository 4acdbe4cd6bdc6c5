"""Sharding: logical axis names to mesh axes. The only module that touches PartitionSpecs.

Model code names the axes of every parameter (`nnx.with_partitioning`) and of its activations
(`constrain`). One rules table maps those logical names to the axes of the mesh. Parameters are
placed by the jit's shardings (`param_shardings`, `state_shardings`); activation constraints take
effect only where a function is traced under `use(mesh, rules)`, as every jitted step is (`under`).

Activations have names of their own, so a table can shard the batch of an activation over an axis
that also shards the width of a weight (FSDP: `batch` and `embed` both over "fsdp").

Logical names used by `alignjax.models`:
  parameters: vocab, embed, heads, kv_heads, mlp, norm
  activations: act_batch, act_length, act_embed, act_heads, act_kv_heads, act_mlp, act_vocab
  (the embeddings' output and every block boundary are [act_batch, act_length, act_embed];
  logits [.., act_vocab]; queries [.., act_heads, None]; keys and values [.., act_kv_heads, None];
  the feed-forward hidden [.., act_mlp])
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
from flax.core import spmd as flax_spmd
from jax.sharding import PartitionSpec

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# The default rules table: FSDP shards the model width of the weights, tensor parallelism shards
# heads, the feed-forward width and the vocabulary; the batch (of data arrays and of activations)
# is split over data and fsdp, and activations keep their full model width.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("norm", None),
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)
MESH_AXES = ("data", "fsdp", "tensor")


def logical_to_spec(logical_axes: Sequence[str | None], rules) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec through `rules` ((logical, mesh-axes) pairs)."""
    return PartitionSpec(*flax_spmd.from_sharding_rules(tuple(logical_axes), rules))


def _fit(spec: PartitionSpec, shape: Sequence[int], axis_sizes: dict[str, int]) -> PartitionSpec:
    """Keeps, for each dimension, the longest prefix of its mesh axes whose product divides it.

    An activation whose dimension the mesh does not divide (3 key/value heads over tensor=2, a
    batch of one prompt) is then replicated along those axes instead of failing to trace.
    """
    out = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        kept, size = [], 1
        for a in axes:
            if dim % (size * axis_sizes[a]):
                break
            kept.append(a)
            size *= axis_sizes[a]
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*out)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation, by logical axis names.

    A no-op unless both a rules table and a mesh are in context (`use`), so single-device code
    pays nothing. Mesh axes that do not divide a dimension are dropped for that dimension.
    """
    rules = flax_spmd.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return x
    spec = _fit(logical_to_spec(logical_axes, rules), x.shape, dict(mesh.shape))
    return jax.lax.with_sharding_constraint(x, spec)


@contextlib.contextmanager
def use(mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[jax.sharding.Mesh]:
    """Puts `mesh` and the logical axis `rules` in context, so that `constrain` takes effect.

    Trace (and run) every jitted step inside it: `with sharding.use(mesh): step(...)`.
    """
    with jax.set_mesh(mesh), flax_spmd.logical_axis_rules(tuple(rules)):
        yield mesh


class _Under:
    def __init__(self, fn: Callable[..., Any], mesh: jax.sharding.Mesh, rules: Rules):
        self.fn, self.mesh, self.rules = fn, mesh, tuple(rules)

    def __call__(self, *args, **kwargs):
        with use(self.mesh, self.rules):
            return self.fn(*args, **kwargs)

    def lower(self, *args, **kwargs) -> jax.stages.Lowered:
        with use(self.mesh, self.rules):
            return self.fn.lower(*args, **kwargs)


def under(mesh: jax.sharding.Mesh, fn: Callable[..., Any], rules: Rules = DEFAULT_RULES):
    """`fn` (a jitted function) wrapped so that each call, and `.lower(...)`, enters
    `use(mesh, rules)`: it traces with the activation constraints in effect. The wrapper keeps
    `fn`, `mesh` and `rules` as attributes."""
    return _Under(fn, mesh, rules)


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


def mesh_of(shardings) -> jax.sharding.Mesh:
    """The one mesh of a tree of NamedShardings (e.g. a state's shardings).

    Raises:
      ValueError if the tree holds no NamedSharding or shardings of different meshes.
    """
    meshes = {s.mesh for s in jax.tree.leaves(shardings)
              if isinstance(s, jax.sharding.NamedSharding)}
    if len(meshes) != 1:
        raise ValueError(f"expected NamedShardings of one mesh, found {len(meshes)} meshes")
    return meshes.pop()


def per_device_bytes(tree) -> int:
    """Bytes of one device's shards of every array in `tree` (arrays or ShapeDtypeStructs with a
    sharding): the memory a device holds for it, e.g. total / 8 for a tree sharded 8 ways and
    the total for a replicated one."""
    def one(x) -> int:
        shape = x.sharding.shard_shape(x.shape)
        return math.prod(shape) * x.dtype.itemsize

    return sum(one(x) for x in jax.tree.leaves(tree))
