"""Tokenizers and chat templates through `transformers.AutoTokenizer` (never remote code)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """Loads a tokenizer (with its chat template) from a Hugging Face directory or a GGUF file.

    Args:
      path: a local directory holding `tokenizer.json`/`tokenizer_config.json`, a `.gguf` file
        (its embedded tokenizer and chat template are used), or a Hub id when there is a network.

    Returns:
      A fast tokenizer. Its pad token falls back to the EOS token when the checkpoint names none.
    """
    # transformers is imported on use: it takes seconds, and `import alignjax.models` should not
    from transformers import AutoTokenizer

    if path.endswith(".gguf"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such GGUF file")
        tok = AutoTokenizer.from_pretrained(
            os.path.dirname(os.path.abspath(path)),
            gguf_file=os.path.basename(path),
            trust_remote_code=False,
        )
    else:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
