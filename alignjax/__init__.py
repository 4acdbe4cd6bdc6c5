"""alignjax: aligning language models with JAX and Flax NNX.

Shape suffixes on array names (e.g. ``logits_BLV``, ``mask_BL``):

  B  batch                  L  sequence length (tokens)
  V  vocabulary             D  model width (hidden size)
  H  query heads            G  key/value heads (grouped-query attention)
  K  head dimension         F  feed-forward width
  S  key length (attention) T  generated tokens / time steps (RL)
"""

__version__ = "0.1.0"
