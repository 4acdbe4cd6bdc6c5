"""Moved to `alignjax.models.tokenizer`; import `load_tokenizer` from `alignjax.models`.

Kept while `alignjax.train` still imports it from here.
"""

from alignjax.models.tokenizer import load_tokenizer

__all__ = ["load_tokenizer"]
