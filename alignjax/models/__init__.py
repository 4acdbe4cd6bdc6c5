"""Llama-family decoders in Flax NNX, and their Hugging Face / GGUF checkpoints.

    config.py       ModelConfig, from and to Hugging Face config.json
    transformer.py  the decoder (Transformer) and its scalar-head variant (ScalarHeadModel)
    weights.py      build, the abstract model, NNX <-> HF names, filling it shard by shard
    hf.py           Hugging Face directories (safetensors, sharded index): load_hf, save_hf
    gguf.py         llama.cpp GGUF files, dequantised: gguf_config, load_gguf
    tokenizer.py    load_tokenizer (HF directory or GGUF, never remote code)
    load.py         load(config.model, mesh) -> (model, ModelConfig, tokenizer), resolve_path
    generate.py     greedy_generate, a plain reference decoding loop
"""

from alignjax.models.config import (
    ModelConfig,
    from_hf_config,
    load_hf_config,
    tiny_config,
    to_hf_config,
)
from alignjax.models.generate import greedy_generate
from alignjax.models.gguf import gguf_config, load_gguf
from alignjax.models.hf import load_hf, save_hf
from alignjax.models.load import load, load_config, load_pretrained, resolve_path
from alignjax.models.tokenizer import load_tokenizer
from alignjax.models.transformer import ScalarHeadModel, Transformer, last_token_values
from alignjax.models.weights import build

__all__ = [
    "ModelConfig",
    "ScalarHeadModel",
    "Transformer",
    "build",
    "from_hf_config",
    "gguf_config",
    "greedy_generate",
    "last_token_values",
    "load",
    "load_config",
    "load_gguf",
    "load_hf",
    "load_hf_config",
    "load_pretrained",
    "load_tokenizer",
    "resolve_path",
    "save_hf",
    "tiny_config",
    "to_hf_config",
]
