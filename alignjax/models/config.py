"""Model configuration for Llama-family decoders, and its mapping to and from Hugging Face configs.

Supported families (the `model_type` of a Hugging Face `config.json`):

* ``llama``: Llama 2, Llama 3/3.1/3.2 (with ``rope_type: llama3`` scaling), SmolLM/SmolLM2.
* ``mistral``: Mistral 7B and friends, including the sliding attention window.
* ``qwen2``: Qwen2 and Qwen2.5 (biases on q/k/v, tied or untied embeddings).

Not supported (rejected with an error naming the setting): Qwen2's per-layer sliding windows
(``use_sliding_window: true``), rope types other than default/linear/llama3, and MoE variants.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import numpy as np

FAMILIES = ("llama", "mistral", "qwen2")
_ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and numerics of a Llama-family decoder.

    Attributes:
      family: one of `FAMILIES`; decides the Hugging Face class names on export.
      vocab_size: V. hidden_size: D. intermediate_size: F. num_layers: decoder blocks.
      num_heads: H query heads. num_kv_heads: G key/value heads (G divides H).
      head_dim: K, per-head width (often D / H, but not always: e.g. Mistral Nemo).
      rms_norm_eps: epsilon of every RMSNorm.
      rope_theta: RoPE base frequency. SmolLM2-135M uses 1e5, Llama 3 5e5, Qwen2 1e6.
      rope_scaling: None, or a dict with "rope_type" in ("linear", "llama3") and its parameters.
      max_position_embeddings: context length the checkpoint was trained for (informational).
      tie_word_embeddings: the output projection reuses the input embedding matrix.
      qkv_bias: biases on q/k/v projections (Qwen2; Llama with attention_bias).
      o_bias: bias on the attention output projection (Llama with attention_bias).
      mlp_bias: biases on the SwiGLU projections.
      sliding_window: None, or the number of keys each query sees (Mistral).
      dtype: compute dtype ("float32" or "bfloat16").
      param_dtype: storage dtype of the parameters.
      remat: rematerialisation per block: "none", "full" or "dots" (keep matmul outputs).
      bos_token_id, eos_token_id, pad_token_id: special tokens of the checkpoint, if known.
    """

    family: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"ModelConfig.family={self.family!r}: expected one of {FAMILIES}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelConfig: num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even for RoPE")
        if self.remat not in ("none", "full", "dots"):
            raise ValueError(f"ModelConfig.remat={self.remat!r}: expected none, full or dots")
        for key in ("dtype", "param_dtype"):
            if getattr(self, key) not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"ModelConfig.{key}={getattr(self, key)!r}: expected float32, "
                                 "bfloat16 or float16")
        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in _ROPE_TYPES:
            raise ValueError(f"ModelConfig.rope_scaling: rope_type {rope_type!r} is not supported "
                             f"(supported: {_ROPE_TYPES})")

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count (embeddings included, the tied output matrix counted once)."""
        d, f, k = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * k * (self.num_heads * 2 + self.num_kv_heads * 2)
        attn += (self.num_heads + 2 * self.num_kv_heads) * k * self.qkv_bias + d * self.o_bias
        mlp = 3 * d * f + (2 * f + d) * self.mlp_bias
        per_layer = attn + mlp + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + emb + d


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Inverse RoPE frequencies [K/2] in float32, with linear or Llama 3 scaling.

    Follows `transformers.modeling_rope_utils` exactly (same float32 arithmetic), so that
    positions map to the same angles as in the published checkpoints.
    """
    dim = cfg.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim
    inv_freq = (1.0 / (np.float32(cfg.rope_theta) ** exponents)).astype(np.float32)
    scaling = cfg.rope_scaling or {}
    rope_type = scaling.get("rope_type", "default")
    if rope_type == "linear":
        inv_freq = inv_freq / np.float32(scaling["factor"])
    elif rope_type == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv_freq = np.where(is_medium, smoothed, scaled)
    return inv_freq.astype(np.float32)


def _rope_from_hf(hf: dict[str, Any], where: str) -> tuple[float, dict[str, Any] | None]:
    """Reads rope theta and scaling from either the new `rope_parameters` or the legacy keys."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling")
    theta = params.pop("rope_theta", hf.get("rope_theta", 10000.0))
    if legacy and not params:
        params = dict(legacy)
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params.pop("type")
    rope_type = params.get("rope_type", "default")
    if rope_type not in _ROPE_TYPES:
        raise ValueError(f"{where}: rope_type {rope_type!r} is not supported "
                         f"(supported: {_ROPE_TYPES})")
    if rope_type == "default":
        return float(theta), None
    keep = {"linear": ("factor",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                       "original_max_position_embeddings")}[rope_type]
    missing = [k for k in keep if k not in params]
    if missing:
        raise ValueError(f"{where}: rope scaling {rope_type!r} lacks {missing}")
    return float(theta), {"rope_type": rope_type, **{k: params[k] for k in keep}}


def from_hf_config(hf: dict[str, Any], *, where: str = "config.json", **overrides: Any
                   ) -> ModelConfig:
    """Maps a Hugging Face `config.json` dict to a `ModelConfig`.

    Args:
      hf: the parsed config.json.
      where: the file name used in error messages.
      **overrides: ModelConfig fields to set (e.g. dtype="bfloat16").
    """
    family = hf.get("model_type")
    if family not in FAMILIES:
        arch = hf.get("architectures")
        raise ValueError(f"{where}: model_type={family!r} (architectures={arch}) is not "
                         f"supported; supported model types: {FAMILIES}")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads"):
        if key not in hf:
            raise ValueError(f"{where}: missing required key {key!r}")
    if family == "qwen2" and hf.get("use_sliding_window"):
        raise ValueError(f"{where}: use_sliding_window=true (Qwen2 per-layer sliding windows) "
                         "is not supported")
    theta, scaling = _rope_from_hf(hf, where)
    heads = hf["num_attention_heads"]
    attention_bias = bool(hf.get("attention_bias", False))
    sliding = hf.get("sliding_window") if family == "mistral" else None
    kwargs = dict(
        family=family,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=True if family == "qwen2" else attention_bias,
        o_bias=False if family == "qwen2" else attention_bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        sliding_window=sliding,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
        pad_token_id=hf.get("pad_token_id"),
    )
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


def to_hf_config(cfg: ModelConfig, *, architecture: str | None = None) -> dict[str, Any]:
    """The Hugging Face `config.json` dict of `cfg` (loadable by `transformers.AutoConfig`)."""
    cls = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[cfg.family]
    hf: dict[str, Any] = {
        "architectures": [architecture or f"{cls}ForCausalLM"],
        "model_type": cfg.family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": dict(cfg.rope_scaling) if cfg.rope_scaling else None,
        "torch_dtype": cfg.param_dtype,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
    }
    if cfg.family == "llama":
        hf.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
    elif cfg.family == "mistral":
        hf.update(sliding_window=cfg.sliding_window)
    else:
        hf.update(use_sliding_window=False)
    return hf


def load_hf_config(path: str, **overrides: Any) -> ModelConfig:
    """Reads `config.json` from a Hugging Face checkpoint directory."""
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    try:
        with open(file) as f:
            hf = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{file}: no config.json in the checkpoint directory") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON (line {e.lineno}): {e.msg}") from None
    return from_hf_config(hf, where=file, **overrides)


def tiny_config(family: str = "llama", **overrides: Any) -> ModelConfig:
    """A small random-initialisable config of `family`, for tests and notebooks.

    Two layers, D=64, 4 query heads over 2 key/value heads (grouped-query attention).
    """
    base = dict(family=family, vocab_size=256, hidden_size=64, intermediate_size=128,
                num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-5,
                rope_theta=10000.0, max_position_embeddings=128, tie_word_embeddings=False,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "qwen2":
        base.update(qkv_bias=True, tie_word_embeddings=True, rope_theta=1e6)
    if family == "mistral":
        base.update(sliding_window=8)
    base.update(overrides)
    return ModelConfig(**base)
