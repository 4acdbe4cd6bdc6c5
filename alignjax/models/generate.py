"""Greedy decoding without a KV cache: a plain reference loop over a fixed-size buffer.

Every step re-runs the model on the whole buffer (quadratic cost), which keeps it obviously
correct; the RL sampler with a KV cache is separate. Shapes are static, so one compilation
serves all steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignjax.models.transformer import Transformer


def greedy_generate(model: Transformer, prompt_ids: list[int], *, max_new_tokens: int,
                    eos_token_id: int | list[int] | None = None) -> list[int]:
    """Greedy continuation of one prompt; stops after an EOS token or `max_new_tokens`.

    Returns:
      The generated token ids (EOS included when reached), without the prompt.
    """
    eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
    n = len(prompt_ids)
    buf = np.zeros((1, n + max_new_tokens), np.int32)
    buf[0, :n] = prompt_ids
    graphdef, state = nnx.split(model)

    @jax.jit
    def next_token(state, ids_BL, length):
        mask_BL = (jnp.arange(ids_BL.shape[1]) < length)[None].astype(jnp.int32)
        logits_BLV = nnx.merge(graphdef, state)(ids_BL, mask_BL)
        return jnp.argmax(logits_BLV[0, length - 1])

    out = []
    for t in range(max_new_tokens):
        tok = int(next_token(state, jnp.asarray(buf), n + t))
        buf[0, n + t] = tok
        out.append(tok)
        if tok in eos:
            break
    return out
