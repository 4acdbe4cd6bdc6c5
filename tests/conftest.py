"""Shared pytest fixtures."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The SmolLM2-135M-Instruct tokenizer (ChatML chat template), loaded once (~6 s)."""
    from alignjax.assets import smollm2_gguf_path
    from alignjax.tokenizer import load_tokenizer

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
