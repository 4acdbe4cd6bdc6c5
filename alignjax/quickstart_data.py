"""Moved to `alignjax.data.embedded`; import `write_quickstart` from `alignjax.data`.

Kept while `alignjax.train` still imports it from here.
"""

from alignjax.data.embedded import PAIRS, write_quickstart

__all__ = ["PAIRS", "write_quickstart"]
