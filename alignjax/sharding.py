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
import numpy as np
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
        self._compiled: set = set()  # call signatures compiled (and waited for) so far

    def __call__(self, *args, **kwargs):
        with use(self.mesh, self.rules):
            if jax.process_count() > 1:
                key = _signature(args, kwargs)
                if key not in self._compiled:  # compile, wait for the others, then run
                    self.fn.lower(*args, **kwargs).compile()
                    barrier(f"compiled {getattr(self.fn, '__name__', 'fn')}")
                    self._compiled.add(key)
            return self.fn(*args, **kwargs)

    def lower(self, *args, **kwargs) -> jax.stages.Lowered:
        with use(self.mesh, self.rules):
            return self.fn.lower(*args, **kwargs)


def under(mesh: jax.sharding.Mesh, fn: Callable[..., Any], rules: Rules = DEFAULT_RULES):
    """`fn` (a jitted function) wrapped so that each call, and `.lower(...)`, enters
    `use(mesh, rules)`: it traces with the activation constraints in effect. The wrapper keeps
    `fn`, `mesh` and `rules` as attributes.

    In a multi-process run the first call of each argument signature compiles `fn`, waits at a
    `barrier` for every process to have compiled it, and only then runs it. A collective's
    first run sets up its CPU (gloo) context with a fixed 30 s wait for the other processes; a
    process that finished compiling a minute earlier would time out there.
    """
    return _Under(fn, mesh, rules)


def _signature(args, kwargs) -> tuple:
    leaves, treedef = jax.tree.flatten((args, kwargs))
    return treedef, tuple(
        (tuple(x.shape), str(x.dtype), getattr(x, "sharding", None)) if hasattr(x, "shape")
        else (type(x).__name__, repr(x)) for x in leaves)


_BARRIERS = [0]  # barriers passed so far: every process passes them in the same order


def barrier(name: str, timeout_s: float = 3600.0) -> None:
    """Every process of a multi-process run waits here until all have arrived (no-op alone).

    It waits through JAX's coordination service (`jax.distributed`), not through a collective,
    so `timeout_s` holds however long the others take (compiling, reading data).

    Raises:
      jax.errors.JaxRuntimeError (DEADLINE_EXCEEDED) when a process does not arrive in time.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the client that jax.distributed.initialize started

    _BARRIERS[0] += 1
    distributed.global_state.client.wait_at_barrier(f"alignjax {_BARRIERS[0]} {name}",
                                                    timeout_in_ms=int(timeout_s * 1000))


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


# --- Several processes (hosts): initialisation, this host's rows, host -> global arrays ---


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1,
               local_device_ids: Sequence[int] | None = None) -> None:
    """Joins this process to a multi-process JAX run (`jax.distributed.initialize`).

    Empty / 0 / -1 arguments are left to JAX, which reads JAX_COORDINATOR_ADDRESS (and
    JAX_LOCAL_DEVICE_IDS) from the environment and detects Cloud TPU, SLURM, Open MPI and
    Kubernetes jobs by itself. On CPU the processes exchange collectives through gloo.

    Raises:
      ValueError naming the flags when only some of the three are given.
    """
    given = [bool(coordinator_address), num_processes > 0, process_id >= 0]
    if any(given) and not all(given):
        raise ValueError("--coordinator_address, --num_processes and --process_id: give all "
                         "three or none (JAX then detects the cluster), got "
                         f"{coordinator_address!r}, {num_processes}, {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address or None,
                               num_processes=num_processes if num_processes > 0 else None,
                               process_id=process_id if process_id >= 0 else None,
                               local_device_ids=local_device_ids)


def is_main_process() -> bool:
    """True on the process that writes logs, metrics, progress bars and exports (process 0)."""
    return jax.process_index() == 0


def host_rows(mesh: jax.sharding.Mesh, global_rows: int, rules=DEFAULT_RULES) -> tuple[int, int]:
    """[start, stop): the rows of a global batch of `global_rows` that this process's devices hold.

    Under `batch_sharding(mesh)` every process's devices hold one contiguous block of rows
    (processes that differ only along an axis the batch is not split over, such as tensor,
    hold the same block). Each host reads just those rows and `host_to_global` puts them in
    place, so the global array is the one-process batch, row for row.

    Raises:
      ValueError when the batch does not split evenly over the batch axes, or when this
      process's rows are not one block (a device order that interleaves processes).
    """
    count = batch_shard_count(mesh, rules)
    if global_rows % count:
        raise ValueError(f"config.batch_size={global_rows} is not divisible by the {count} "
                         "batch shards of config.mesh (data * fsdp)")
    index_map = batch_sharding(mesh, rules).addressable_devices_indices_map((global_rows,))
    starts = sorted({idx[0].indices(global_rows)[:2] for idx in index_map.values()})
    start, stop = starts[0][0], starts[-1][1]
    if sum(b - a for a, b in starts) != stop - start:
        raise ValueError(f"this process's batch rows {starts} are not one block; build the mesh "
                         "with sharding.make_mesh (devices in process order)")
    return start, stop


def host_to_global(batch: dict[str, Any], mesh: jax.sharding.Mesh, global_rows: int,
                   rules=DEFAULT_RULES) -> dict[str, jax.Array]:
    """Global batch arrays from this host's rows (`host_rows`) of a batch of `global_rows`."""

    target = batch_sharding(mesh, rules)
    return {k: jax.make_array_from_process_local_data(
                target, np.asarray(v), (global_rows, *np.shape(v)[1:]))
            for k, v in batch.items()}


def process_0_says(flag: bool) -> bool:
    """Process 0's `flag`, on every process (a collective in a multi-process run): for choices
    that read files, so that every process takes the same branch."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(bool(flag))))


def to_host(tree):
    """NumPy copies of the arrays of `tree`, whole on every process.

    An array spread over the devices of several processes is gathered first (a collective:
    every process calls `to_host` at the same point); any other array is read directly.
    """

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)


def replicate(tree, mesh: jax.sharding.Mesh):
    """Every array of `tree` whole on every device (a collective: every process calls it), so
    that any one process can read it (exports)."""
    return jax.jit(lambda t: t, out_shardings=replicated(mesh))(tree)
