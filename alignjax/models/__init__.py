"""Llama-family decoders in Flax NNX, and their Hugging Face / GGUF checkpoints."""

from alignjax.models.checkpoint import (
    build,
    gguf_config,
    load_gguf,
    load_hf,
    load_pretrained,
    save_hf,
)
from alignjax.models.config import (
    ModelConfig,
    from_hf_config,
    load_hf_config,
    tiny_config,
    to_hf_config,
)
from alignjax.models.generate import greedy_generate
from alignjax.models.transformer import ScalarHeadModel, Transformer, last_token_values

__all__ = [
    "ModelConfig",
    "ScalarHeadModel",
    "Transformer",
    "build",
    "from_hf_config",
    "gguf_config",
    "greedy_generate",
    "last_token_values",
    "load_gguf",
    "load_hf",
    "load_hf_config",
    "load_pretrained",
    "save_hf",
    "tiny_config",
    "to_hf_config",
]
