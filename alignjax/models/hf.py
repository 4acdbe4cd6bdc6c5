"""Hugging Face checkpoint directories (config.json + safetensors, sharded too): read and write.

Only safetensors files are read here: pickled `*.bin` checkpoints are refused, nothing is
unpickled and no remote code runs. Tensors are read from memory maps, slice by slice onto the
shards (`alignjax.models.weights.assemble`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from typing import Any

import jax
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from alignjax.models.config import ModelConfig, load_hf_config, to_hf_config
from alignjax.models.transformer import ScalarHeadModel
from alignjax.models.weights import NP_DTYPES, Model, assemble, hf_name

# Tensors a checkpoint may hold that the model does not use.
_IGNORED = re.compile(r"(.*rotary_emb\.inv_freq|lm_head\.weight|score\.weight)$")


def _weight_files(path: str) -> dict[str, str]:
    """Tensor name -> safetensors file, from the index of a sharded checkpoint or a single file."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{index}: not a safetensors index ({e!r})") from None
        return {k: os.path.join(path, v) for k, v in weight_map.items()}
    single = os.path.join(path, "model.safetensors")
    if not os.path.exists(single):
        found = sorted(os.listdir(path))
        hint = (" (pickled *.bin checkpoints are never loaded: convert them to safetensors)"
                if any(f.endswith((".bin", ".pt", ".pth")) for f in found) else "")
        raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json"
                                f"{hint}; found {found}")
    with _open_safetensors(single) as f:
        return {k: single for k in f.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)


def _open_safetensors(file: str):
    try:
        return safe_open(file, framework="numpy")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{file}: cannot read safetensors file (truncated or corrupt?): {e}"
                         ) from None


def load_hf(path: str, *, head: str = "lm", shardings: nnx.State | None = None,
            **overrides: Any) -> tuple[Model, ModelConfig]:
    """Loads a Hugging Face checkpoint directory (config.json + safetensors, sharded too).

    Args:
      path: the directory.
      head: "lm" for a causal LM, "scalar" for a reward/value model (`score.weight` is read
        when present, else initialised fresh).
      shardings: optional NamedShardings, structured like the model state
        (`alignjax.sharding`), onto which each tensor is placed slice by slice.
      **overrides: ModelConfig fields, e.g. dtype="bfloat16", param_dtype="bfloat16".

    Raises:
      ValueError / FileNotFoundError / KeyError naming the file and the tensor on unknown
      architectures, missing, misshapen or unexpected tensors and truncated files.
    """
    cfg = load_hf_config(path, **overrides)
    files = _weight_files(path)
    handles: dict[str, Any] = {}
    used = set()
    with contextlib.ExitStack() as stack:
        def read(name, hf_shape):
            if name not in files:
                if name == "score.weight":
                    return None
                raise KeyError(f"{path}: tensor {name!r} is missing from the checkpoint")
            file = files[name]
            if file not in handles:
                handles[file] = stack.enter_context(_open_safetensors(file))
            try:
                sl = handles[file].get_slice(name)
            except SafetensorError as e:
                raise ValueError(f"{file}: cannot read tensor {name!r}: {e}") from None
            if tuple(sl.get_shape()) != tuple(hf_shape):
                raise ValueError(f"{file}: tensor {name!r} has shape {tuple(sl.get_shape())}, "
                                 f"expected {tuple(hf_shape)} from config.json")
            used.add(name)
            return _SliceReader(sl, file, name)

        model = assemble(cfg, head, read, shardings, path)
    unexpected = sorted(k for k in files if k not in used and not _IGNORED.match(k))
    if unexpected:
        raise ValueError(f"{path}: checkpoint tensors not used by a {cfg.family} model with this "
                         f"config.json: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    return model, cfg


class _SliceReader:
    """Indexes a safetensors slice, naming the file and tensor if the bytes are not there."""

    def __init__(self, sl, file: str, name: str):
        self.sl, self.file, self.name = sl, file, name

    def __getitem__(self, index):
        try:
            return self.sl[index]
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{self.file}: cannot read tensor {self.name!r}: {e}") from None


def _to_numpy(x: jax.Array) -> np.ndarray:
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def save_hf(model: Model, path: str, *, tokenizer=None, dtype: str | None = None,
            max_shard_bytes: int = 2 << 30) -> None:
    """Writes `model` as a Hugging Face directory that `transformers` loads.

    The directory is written to a temporary sibling and renamed into place, so a crash never
    leaves a half-written checkpoint. With several processes, every process must call this (the
    parameters are gathered); only process 0 writes.

    Args:
      model: a Transformer (saved as `*ForCausalLM`) or ScalarHeadModel
        (`*ForSequenceClassification`, one label).
      path: the output directory (replaced if it exists).
      tokenizer: optional tokenizer to save beside the weights.
      dtype: storage dtype ("float32", "bfloat16"); default: the parameter dtype.
      max_shard_bytes: split into several safetensors files above this size.
    """
    scalar = isinstance(model, ScalarHeadModel)
    cfg = model.model.cfg if scalar else model.cfg
    np_dtype = NP_DTYPES[dtype or cfg.param_dtype]
    tensors: dict[str, np.ndarray] = {}
    for p, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name, transposed = hf_name(p, scalar)
        value = _to_numpy(var.get_value()).astype(np_dtype)
        tensors[name] = np.ascontiguousarray(value.T if transposed else value)
    if jax.process_index() != 0:
        return
    cls = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[cfg.family]
    hf_cfg = to_hf_config(cfg.replace(param_dtype=dtype or cfg.param_dtype),
                          architecture=f"{cls}ForSequenceClassification" if scalar else None)
    if scalar:
        hf_cfg.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-export-", dir=parent)
    try:
        _write_shards(tensors, tmp, max_shard_bytes)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_cfg, f, indent=2)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_shards(tensors: dict[str, np.ndarray], out: str, max_bytes: int) -> None:
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, value in tensors.items():
        if shards[-1] and size + value.nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = value
        size += value.nbytes
    if len(shards) == 1:
        save_file(shards[0], os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(out, file), metadata={"format": "pt"})
        weight_map.update({k: file for k in shard})
    total = sum(v.nbytes for v in tensors.values())
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
