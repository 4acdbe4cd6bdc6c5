"""Shared pytest fixtures."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The SmolLM2-135M-Instruct tokenizer (ChatML chat template), loaded once (~6 s)."""
    from alignjax.assets import smollm2_gguf_path
    from alignjax.models import load_tokenizer

    try:
        path = smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return load_tokenizer(path)


@pytest.fixture(scope="session")
def shared_data() -> str:
    """The real data directory ($ALIGNJAX_SHARED_DATA, default ../shared/data); skips if absent."""
    from alignjax.data.readers import shared_data_dir

    path = shared_data_dir()
    if not os.path.isdir(path):
        pytest.skip(f"real data not found at {path} (set ALIGNJAX_SHARED_DATA)")
    return path


def save_tiny_model(path: str, tokenizer, **overrides) -> str:
    """A random two-layer Llama in Hugging Face format with the SmolLM2 tokenizer beside it."""
    from alignjax import models

    settings = {"vocab_size": len(tokenizer), "max_position_embeddings": 512,
                "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id}
    cfg = models.tiny_config("llama", **{**settings, **overrides})
    models.save_hf(models.build(cfg), path, tokenizer=tokenizer)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_tokenizer) -> str:
    """A directory holding a tiny random model that shares the SmolLM2 vocabulary."""
    return save_tiny_model(str(tmp_path_factory.mktemp("tiny_model")), smollm2_tokenizer)
