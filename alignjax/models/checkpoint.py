"""Import and export of Hugging Face checkpoints (safetensors, GGUF), tensor by tensor.

Only safetensors, GGUF and (elsewhere) orbax files are read: nothing is unpickled and no remote
code runs. Each tensor is read from a memory map and, when a sharding is given, placed with
`jax.make_array_from_callback`, which reads only the slice each device holds: a model is never
held whole on the host a second time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from alignjax.models.config import ModelConfig, load_hf_config, to_hf_config
from alignjax.models.transformer import ScalarHeadModel, Transformer

Model = Transformer | ScalarHeadModel
# Tensors a checkpoint may hold that the model does not use.
_IGNORED = re.compile(r"(.*rotary_emb\.inv_freq|lm_head\.weight|score\.weight)$")

_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


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


def _abstract(cfg: ModelConfig, head: str) -> tuple[nnx.GraphDef, nnx.State]:
    return nnx.split(nnx.eval_shape(lambda: build(cfg, head=head)))


def _assemble(cfg: ModelConfig, head: str, read: Callable[[str, tuple[int, ...]], Any],
              shardings: nnx.State | None, where: str, seed: int = 0) -> Model:
    """Fills an abstract model with tensors from `read(name, hf_shape) -> array-like slicer`."""
    graphdef, state = _abstract(cfg, head)
    flat_shardings = dict(nnx.to_flat_state(shardings)) if shardings is not None else {}
    dtype = _NP_DTYPES[cfg.param_dtype]
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
            value = _place(src, shape, transposed, dtype, sharding)
        leaves.append((path, var.replace(value)))
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def _place(src, shape, transposed: bool, dtype, sharding) -> jax.Array:
    def get(index):
        index = tuple(index) if index is not None else tuple(slice(None) for _ in shape)
        block = src[index[::-1]] if transposed else src[index]
        block = np.asarray(block)
        return (block.T if transposed else block).astype(dtype)

    if sharding is None:
        return jnp.asarray(get(None))
    return jax.make_array_from_callback(shape, sharding, get)


# --------------------------------------------------------------------------------------------
# Hugging Face directories (config.json + safetensors).
# --------------------------------------------------------------------------------------------


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
        return {k: single for k in f.keys()}


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

        model = _assemble(cfg, head, read, shardings, path)
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
    np_dtype = _NP_DTYPES[dtype or cfg.param_dtype]
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


# --------------------------------------------------------------------------------------------
# GGUF (llama.cpp) files, dequantised.
# --------------------------------------------------------------------------------------------

_GGUF_NAMES = [
    (r"model\.embed_tokens\.weight", "token_embd.weight"),
    (r"model\.norm\.weight", "output_norm.weight"),
    (r"lm_head\.weight", "output.weight"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", r"blk.\1.attn_norm.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"blk.\1.ffn_norm.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", r"blk.\1.attn_\2.\3"),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.(weight|bias)", r"blk.\1.attn_output.\2"),
    (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.(weight|bias)", r"blk.\1.ffn_\2.\3"),
]


def gguf_name(hf: str) -> str:
    for pattern, repl in _GGUF_NAMES:
        if re.fullmatch(pattern, hf):
            return re.sub(pattern, repl, hf)
    raise KeyError(f"no GGUF name for tensor {hf!r}")


def _gguf_reader(file: str):
    import gguf

    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: no such GGUF file")
    try:
        return gguf.GGUFReader(file)
    except Exception as e:  # gguf raises ValueError/IndexError/struct errors on bad files
        raise ValueError(f"{file}: cannot read GGUF file (truncated or corrupt?): {e!r}") from None


def _gguf_field(reader, key: str, file: str, default: Any = ...) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is ...:
            raise KeyError(f"{file}: GGUF metadata key {key!r} is missing")
        return default
    return field.contents()


def gguf_config(file: str, reader=None, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a GGUF file, from its llama.cpp metadata."""
    reader = reader or _gguf_reader(file)
    arch = _gguf_field(reader, "general.architecture", file)
    if arch not in ("llama", "qwen2", "mistral"):
        raise ValueError(f"{file}: GGUF architecture {arch!r} is not supported "
                         "(supported: llama, qwen2, mistral)")

    def get(key, default=...):
        return _gguf_field(reader, f"{arch}.{key}", file, default)

    heads = get("attention.head_count")
    hidden = get("embedding_length")
    vocab = get("vocab_size", None) or len(_gguf_field(reader, "tokenizer.ggml.tokens", file))
    names = {t.name for t in reader.tensors}
    scaling = None
    if get("rope.scaling.type", None) == "linear":
        scaling = {"rope_type": "linear", "factor": get("rope.scaling.factor")}
    cfg = dict(
        family="qwen2" if arch == "qwen2" else "llama",
        vocab_size=int(vocab), hidden_size=int(hidden),
        intermediate_size=int(get("feed_forward_length")),
        num_layers=int(get("block_count")), num_heads=int(heads),
        num_kv_heads=int(get("attention.head_count_kv", heads)),
        head_dim=int(get("attention.key_length", None) or get("rope.dimension_count", None)
                     or hidden // heads),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float(get("rope.freq_base", 10000.0)), rope_scaling=scaling,
        max_position_embeddings=int(get("context_length", 4096)),
        tie_word_embeddings="output.weight" not in names,
        qkv_bias="blk.0.attn_q.bias" in names,
        o_bias="blk.0.attn_output.bias" in names,
        sliding_window=get("attention.sliding_window", None),
        bos_token_id=_gguf_field(reader, "tokenizer.ggml.bos_token_id", file, None),
        eos_token_id=_gguf_field(reader, "tokenizer.ggml.eos_token_id", file, None),
        pad_token_id=_gguf_field(reader, "tokenizer.ggml.padding_token_id", file, None),
    )
    cfg.update(overrides)
    return ModelConfig(**cfg)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undoes llama.cpp's q/k row permutation (interleaved RoPE -> rotate-half)."""
    rows = w.shape[0] // n_head // 2
    return w.reshape(n_head, rows, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_gguf(file: str, *, head: str = "lm", shardings: nnx.State | None = None,
              **overrides: Any) -> tuple[Model, ModelConfig]:
    """Loads a GGUF file (any llama.cpp quantisation), dequantised to `param_dtype`.

    Tensors are dequantised one at a time, so the host holds at most one float tensor beside
    the memory-mapped file.
    """
    import gguf

    reader = _gguf_reader(file)
    cfg = gguf_config(file, reader, **overrides)
    arch = _gguf_field(reader, "general.architecture", file)
    tensors = {t.name: t for t in reader.tensors}

    def read(name, hf_shape):
        if name == "score.weight":
            return None
        gname = gguf_name(name)
        if gname not in tensors:
            raise KeyError(f"{file}: tensor {gname!r} ({name}) is missing from the GGUF file")
        t = tensors[gname]
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type)
        except Exception as e:
            raise ValueError(f"{file}: cannot dequantise tensor {gname!r}: {e!r}") from None
        w = np.asarray(w, np.float32).reshape(tuple(int(d) for d in reversed(t.shape)))
        if w.shape != tuple(hf_shape):
            raise ValueError(f"{file}: tensor {gname!r} has shape {w.shape}, expected "
                             f"{tuple(hf_shape)} from the GGUF metadata")
        if arch in ("llama", "mistral") and re.search(r"attn_[qk]\.", gname):
            w = _unpermute(w, cfg.num_heads if ".attn_q." in gname else cfg.num_kv_heads)
        return w

    return _assemble(cfg, head, read, shardings, file), cfg


def load_pretrained(path: str, *, head: str = "lm", shardings: nnx.State | None = None,
                    **overrides: Any) -> tuple[Model, ModelConfig]:
    """Loads a GGUF file, a local Hugging Face directory, or a Hub id (when online).

    A Hub id is fetched with `huggingface_hub.snapshot_download`, limited to config, tokenizer
    and safetensors files: pickled weights are never downloaded nor loaded.
    """
    if path.endswith(".gguf"):
        return load_gguf(path, head=head, shardings=shardings, **overrides)
    if not os.path.isdir(path):
        if os.path.exists(path) or path.count("/") != 1:
            raise FileNotFoundError(f"{path}: not a checkpoint directory, GGUF file or Hub id")
        from huggingface_hub import snapshot_download

        path = snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "tokenizer*"])
    return load_hf(path, head=head, shardings=shardings, **overrides)

