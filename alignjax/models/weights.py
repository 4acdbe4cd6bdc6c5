"""What every checkpoint format shares: build, the abstract model, filling it tensor by tensor.

A format (`hf.py`, `gguf.py`) only supplies `read(hf_name, hf_shape) -> array-like`, indexed
by Hugging Face tensor names; `assemble` does the rest. Each tensor is read from a memory map
and, when a sharding is given, placed with `jax.make_array_from_callback`, which reads only the
slice each device holds: a model is never held whole on the host a second time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from alignjax.models.config import ModelConfig
from alignjax.models.transformer import ScalarHeadModel, Transformer

Model = Transformer | ScalarHeadModel

NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def build(cfg: ModelConfig, *, head: str = "lm", seed: int = 0) -> Model:
    """A randomly initialised model: `head="lm"` (Transformer) or "scalar" (ScalarHeadModel)."""
    if head == "lm":
        return Transformer(cfg, rngs=nnx.Rngs(seed))
    if head == "scalar":
        return ScalarHeadModel(cfg, rngs=nnx.Rngs(seed))
    raise ValueError(f"head={head!r}: expected 'lm' or 'scalar'")


def hf_name(path: tuple[Any, ...], scalar_head: bool) -> tuple[str, bool]:
    """Hugging Face tensor name of an NNX state path, and whether the layout is transposed."""
    *mods, leaf = (str(p) for p in path)
    if not scalar_head and mods[0] != "lm_head":
        mods = ["model", *mods]
    name = ".".join(mods) + (".bias" if leaf == "bias" else ".weight")
    return name, leaf == "kernel"


def abstract_model(cfg: ModelConfig, head: str = "lm") -> tuple[nnx.GraphDef, nnx.State]:
    """The model's graphdef and its state of shapes and dtypes, without allocating it."""
    return nnx.split(nnx.eval_shape(lambda: build(cfg, head=head)))


def assemble(cfg: ModelConfig, head: str, read: Callable[[str, tuple[int, ...]], Any],
             shardings: nnx.State | None, where: str, seed: int = 0) -> Model:
    """Fills an abstract model with tensors from `read(name, hf_shape) -> array-like slicer`."""
    graphdef, state = abstract_model(cfg, head)
    flat_shardings = dict(nnx.to_flat_state(shardings)) if shardings is not None else {}
    dtype = NP_DTYPES[cfg.param_dtype]
    leaves = []
    for path, var in nnx.to_flat_state(state):
        shape = tuple(var.get_value().shape)
        name, transposed = hf_name(path, head == "scalar")
        hf_shape = shape[::-1] if transposed else shape
        sharding = flat_shardings.get(path)
        sharding = getattr(sharding, "get_value", lambda s=sharding: s)()
        src = read(name, hf_shape)
        if src is None:  # a fresh scalar head on top of a language-model checkpoint
            key = jax.random.fold_in(jax.random.key(seed), 7)
            value = (0.02 * jax.random.normal(key, shape)).astype(dtype)
            value = jax.device_put(value, sharding) if sharding is not None else value
        else:
            value = place(src, shape, transposed, dtype, sharding)
        leaves.append((path, var.replace(value)))
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def place(src, shape, transposed: bool, dtype, sharding) -> jax.Array:
    """One parameter from `src` (HF layout), read slice by slice onto `sharding` when given."""
    def get(index):
        index = tuple(index) if index is not None else tuple(slice(None) for _ in shape)
        block = src[index[::-1]] if transposed else src[index]
        block = np.asarray(block)
        return (block.T if transposed else block).astype(dtype)

    if sharding is None:
        return jnp.asarray(get(None))
    return jax.make_array_from_callback(shape, sharding, get)
