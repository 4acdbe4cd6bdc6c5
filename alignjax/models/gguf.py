"""GGUF (llama.cpp) files, dequantised: the config from the metadata, then the tensors.

llama.cpp renames the tensors (`_GGUF_NAMES`, from the Hugging Face names) and permutes the
rows of the query and key projections of Llama and Mistral for its interleaved RoPE
(`_unpermute` restores the rotate-half order). Any quantisation reads: each tensor is
dequantised on its own, when `alignjax.models.weights.assemble` asks for it.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
from flax import nnx

from alignjax.models.config import ModelConfig
from alignjax.models.weights import Model, assemble

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
    """The llama.cpp name of a Hugging Face tensor name, e.g. `blk.0.attn_q.weight`."""
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

    return assemble(cfg, head, read, shardings, file), cfg
