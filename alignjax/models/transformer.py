"""A Flax NNX decoder for the Llama family (Llama 2/3, SmolLM2, Qwen2/2.5, Mistral).

Attribute names mirror the Hugging Face modules (`embed_tokens`, `layers[i].self_attn.q_proj`,
`mlp.gate_proj`, ...) so that checkpoint conversion is a mechanical renaming; see
`alignjax.models.weights`.

Padding and packing are handled the same way: every token carries a segment id (0 = padding).
A query attends causally to keys of its own non-zero segment, and positions restart at 0 at the
start of each segment. A plain attention mask is the special case segment = mask, so left- and
right-padded batches give exactly the logits of the unpadded sequences.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignjax.models.config import ModelConfig, rope_inv_freq
from alignjax.sharding import constrain

# Logical names of activations (`alignjax.sharding`): block boundaries, queries, keys/values.
_ACT = ("act_batch", "act_length", "act_embed")
_ACT_HEADS = ("act_batch", "act_length", "act_heads", None)
_ACT_KV_HEADS = ("act_batch", "act_length", "act_kv_heads", None)


def _axes(init, axes):
    """Annotates an initializer with logical axis names; placement is decided by the caller
    (jit output shardings), never eagerly at creation."""
    return nnx.with_partitioning(init, axes, eager_sharding=False)


def _dense(cfg: ModelConfig, d_in: int, d_out: int, axes: tuple[str, str], bias: bool,
           rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        d_in, d_out, use_bias=bias, dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        kernel_init=_axes(nnx.initializers.normal(0.02), axes),
        bias_init=_axes(nnx.initializers.zeros, (axes[1],)),
        rngs=rngs)


class RMSNorm(nnx.Module):
    """RMSNorm computed in float32, cast back, then scaled (the Hugging Face Llama order)."""

    def __init__(self, dim: int, eps: float, param_dtype: str):
        self.weight = nnx.Param(jnp.ones((dim,), jnp.dtype(param_dtype)), out_sharding=("norm",),
                               eager_sharding=False)
        self.eps = eps

    def __call__(self, x_BLD: jax.Array) -> jax.Array:
        x32 = x_BLD.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x_BLD.dtype) * x32.astype(x_BLD.dtype)


def segment_positions(segment_ids_BL: jax.Array) -> jax.Array:
    """Positions that restart at 0 wherever the segment id changes."""
    idx_BL = jnp.broadcast_to(jnp.arange(segment_ids_BL.shape[1]), segment_ids_BL.shape)
    prev_BL = jnp.pad(segment_ids_BL[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    starts_BL = jnp.where(segment_ids_BL != prev_BL, idx_BL, 0)
    return idx_BL - jax.lax.cummax(starts_BL, axis=1)


def attention_mask_BLL(segment_ids_BL: jax.Array, sliding_window: int | None) -> jax.Array:
    """Boolean [B, 1, L, L] mask: causal, same non-zero segment, optional sliding window."""
    q_L = jnp.arange(segment_ids_BL.shape[1])[:, None]
    k_L = jnp.arange(segment_ids_BL.shape[1])[None, :]
    allowed = k_L <= q_L
    if sliding_window is not None:
        allowed &= k_L > q_L - sliding_window
    same = segment_ids_BL[:, :, None] == segment_ids_BL[:, None, :]
    real = (segment_ids_BL != 0)[:, None, :]
    return (allowed[None] & same & real)[:, None]


def rope_cos_sin(cfg: ModelConfig, positions_BL: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, L, K] for rotate-half RoPE, computed in float32 as transformers does."""
    inv_freq = jnp.asarray(rope_inv_freq(cfg))
    freqs_BLk = positions_BL.astype(jnp.float32)[..., None] * inv_freq
    emb_BLK = jnp.concatenate([freqs_BLk, freqs_BLk], axis=-1)
    return jnp.cos(emb_BLK).astype(dtype), jnp.sin(emb_BLK).astype(dtype)


def apply_rope(x_BLHK: jax.Array, cos_BLK: jax.Array, sin_BLK: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x_BLHK, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x_BLHK * cos_BLK[:, :, None] + rotated * sin_BLK[:, :, None]


class Attention(nnx.Module):
    """Grouped-query self-attention with RoPE (softmax in float32)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, h, g, k = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = _dense(cfg, d, h * k, ("embed", "heads"), cfg.qkv_bias, rngs)
        self.k_proj = _dense(cfg, d, g * k, ("embed", "kv_heads"), cfg.qkv_bias, rngs)
        self.v_proj = _dense(cfg, d, g * k, ("embed", "kv_heads"), cfg.qkv_bias, rngs)
        self.o_proj = _dense(cfg, h * k, d, ("heads", "embed"), cfg.o_bias, rngs)
        self.num_heads, self.num_kv_heads, self.head_dim = h, g, k

    def __call__(self, x_BLD, cos_BLK, sin_BLK, mask_B1LL):
        b, length, _ = x_BLD.shape
        q_BLHK = self.q_proj(x_BLD).reshape(b, length, self.num_heads, self.head_dim)
        k_BLGK = self.k_proj(x_BLD).reshape(b, length, self.num_kv_heads, self.head_dim)
        v_BLGK = self.v_proj(x_BLD).reshape(b, length, self.num_kv_heads, self.head_dim)
        q_BLHK = apply_rope(q_BLHK, cos_BLK, sin_BLK)
        k_BLGK = apply_rope(k_BLGK, cos_BLK, sin_BLK)
        q_BLHK = constrain(q_BLHK, _ACT_HEADS)
        k_BLGK, v_BLGK = constrain(k_BLGK, _ACT_KV_HEADS), constrain(v_BLGK, _ACT_KV_HEADS)
        out_BLHK = jax.nn.dot_product_attention(q_BLHK, k_BLGK, v_BLGK, mask=mask_B1LL)
        return self.o_proj(out_BLHK.reshape(b, length, self.num_heads * self.head_dim))

    def cached(self, x_BLD, cos_BLK, sin_BLK, mask_B1LS, k_BGSK, v_BGSK, start):
        """Attention of L new tokens over a KV cache, after writing their keys and values into
        cache slots [start, start + L). Returns (output [B, L, D], k_BGSK, v_BGSK).

        The same arithmetic as `jax.nn.dot_product_attention` in `__call__` (float32 scores
        scaled by 1/sqrt(K), masked with a large negative number, float32 softmax), with the
        cache laid out [B, G, S, K] so that no step transposes it.
        """
        b, length, _ = x_BLD.shape
        g, k = self.num_kv_heads, self.head_dim
        r = self.num_heads // g  # query heads per key/value head
        q_BLHK = self.q_proj(x_BLD).reshape(b, length, self.num_heads, k)
        k_BLGK = self.k_proj(x_BLD).reshape(b, length, g, k)
        v_BLGK = self.v_proj(x_BLD).reshape(b, length, g, k)
        q_BLHK = apply_rope(q_BLHK, cos_BLK, sin_BLK)
        k_BLGK = apply_rope(k_BLGK, cos_BLK, sin_BLK)
        at = (0, 0, start, 0)
        k_BGSK = constrain(jax.lax.dynamic_update_slice(
            k_BGSK, k_BLGK.transpose(0, 2, 1, 3).astype(k_BGSK.dtype), at), CACHE_AXES)
        v_BGSK = constrain(jax.lax.dynamic_update_slice(
            v_BGSK, v_BLGK.transpose(0, 2, 1, 3).astype(v_BGSK.dtype), at), CACHE_AXES)
        q_BGLRK = q_BLHK.reshape(b, length, g, r, k).transpose(0, 2, 1, 3, 4)
        s_BGLRS = jnp.einsum("bglrk,bgsk->bglrs", q_BGLRK, k_BGSK,
                             preferred_element_type=jnp.float32)
        s_BGLRS = s_BGLRS * jnp.float32(1.0 / np.sqrt(k))
        s_BGLRS = jnp.where(mask_B1LS[:, :, :, None, :], s_BGLRS,
                            jnp.float32(-0.7 * float(np.finfo(np.float32).max)))
        p_BGLRS = jax.nn.softmax(s_BGLRS, axis=-1).astype(v_BGSK.dtype)
        o_BGLRK = jnp.einsum("bglrs,bgsk->bglrk", p_BGLRS, v_BGSK)
        o_BLD = o_BGLRK.transpose(0, 2, 1, 3, 4).reshape(b, length, self.num_heads * k)
        return self.o_proj(o_BLD.astype(x_BLD.dtype)), k_BGSK, v_BGSK


class MLP(nnx.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = _dense(cfg, d, f, ("embed", "mlp"), cfg.mlp_bias, rngs)
        self.up_proj = _dense(cfg, d, f, ("embed", "mlp"), cfg.mlp_bias, rngs)
        self.down_proj = _dense(cfg, f, d, ("mlp", "embed"), cfg.mlp_bias, rngs)

    def __call__(self, x_BLD):
        h_BLF = constrain(nnx.silu(self.gate_proj(x_BLD)) * self.up_proj(x_BLD),
                          ("act_batch", "act_length", "act_mlp"))
        return self.down_proj(h_BLF)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps,
                                                cfg.param_dtype)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x_BLD, cos_BLK, sin_BLK, mask_B1LL):
        x_BLD = x_BLD + self.self_attn(self.input_layernorm(x_BLD), cos_BLK, sin_BLK, mask_B1LL)
        x_BLD = x_BLD + self.mlp(self.post_attention_layernorm(x_BLD))
        return constrain(x_BLD, _ACT)

    def cached(self, x_BLD, cos_BLK, sin_BLK, mask_B1LS, k_BGSK, v_BGSK, start):
        """`__call__` over a KV cache (see `Attention.cached`); returns (x_BLD, k, v)."""
        a_BLD, k_BGSK, v_BGSK = self.self_attn.cached(
            self.input_layernorm(x_BLD), cos_BLK, sin_BLK, mask_B1LS, k_BGSK, v_BGSK, start)
        x_BLD = x_BLD + a_BLD
        x_BLD = x_BLD + self.mlp(self.post_attention_layernorm(x_BLD))
        return constrain(x_BLD, _STEP_ACT), k_BGSK, v_BGSK


# --------------------------------------------------------------------------------------------
# KV cache (prefill and decode for `alignjax.sampler`).
# --------------------------------------------------------------------------------------------

# Logical axes of the cache and of the activations of cached calls: batch over data/fsdp, key
# and value heads over tensor (see `alignjax.sharding.DEFAULT_RULES`).
CACHE_AXES = ("act_batch", "act_kv_heads", "act_length", None)
_STEP_ACT = ("act_batch", "act_length", "act_embed")


class KVCache(NamedTuple):
    """Keys and values of every layer: `k[i]`, `v[i]` are [B, G, S, K] over S cache slots."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]

    @classmethod
    def zeros(cls, cfg: ModelConfig, batch: int, length: int) -> KVCache:
        """An empty cache of `length` slots in the compute dtype, placed like the activations."""
        def one():
            shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
            return constrain(jnp.zeros(shape, jnp.dtype(cfg.dtype)), CACHE_AXES)

        return cls(tuple(one() for _ in range(cfg.num_layers)),
                   tuple(one() for _ in range(cfg.num_layers)))


def cached_attention_mask(key_mask_BS: jax.Array, start: jax.Array | int, length: int,
                          sliding_window: int | None) -> jax.Array:
    """Boolean [B, 1, L, S] mask of L queries at slots [start, start + L) over S cache slots:
    causal in slot order, real keys only, optional sliding window."""
    q_L1 = start + jnp.arange(length)[:, None]
    k_1S = jnp.arange(key_mask_BS.shape[1])[None, :]
    allowed_LS = k_1S <= q_L1
    if sliding_window is not None:
        allowed_LS &= k_1S > q_L1 - sliding_window
    return (allowed_LS[None] & (key_mask_BS != 0)[:, None, :])[:, None]


_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Transformer(nnx.Module):
    """Decoder-only language model: `model(input_ids_BL, attention_mask_BL) -> logits_BLV`.

    Args:
      cfg: the architecture and numerics.
      rngs: initialisation randomness (use `nnx.eval_shape` to build without allocating).
      lm_head: build the output projection (reward and value models skip it when untied).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, lm_head: bool = True):
        self.cfg = cfg
        self.embed_tokens = nnx.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype),
            embedding_init=_axes(nnx.initializers.normal(0.02), ("vocab", "embed")),
            rngs=rngs)
        self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype)
        self.lm_head = (_dense(cfg, cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), False,
                               rngs) if lm_head and not cfg.tie_word_embeddings else None)

    def hidden(self, input_ids_BL: jax.Array, attention_mask_BL: jax.Array | None = None, *,
               positions_BL: jax.Array | None = None,
               segment_ids_BL: jax.Array | None = None) -> jax.Array:
        """Final-norm hidden states [B, L, D] (before the output projection).

        Args:
          input_ids_BL: token ids.
          attention_mask_BL: 1 on real tokens, 0 on padding (left or right). Ignored when
            `segment_ids_BL` is given.
          positions_BL: RoPE positions; by default they restart at 0 in every segment, so
            padding never shifts them.
          segment_ids_BL: packed examples (1, 2, ...; 0 = padding): no attention across them.
        """
        if segment_ids_BL is None:
            segment_ids_BL = (jnp.ones_like(input_ids_BL) if attention_mask_BL is None
                              else attention_mask_BL.astype(jnp.int32))
        if positions_BL is None:
            positions_BL = segment_positions(segment_ids_BL)
        mask_B1LL = attention_mask_BLL(segment_ids_BL, self.cfg.sliding_window)
        x_BLD = constrain(self.embed_tokens(input_ids_BL), _ACT)
        cos_BLK, sin_BLK = rope_cos_sin(self.cfg, positions_BL, x_BLD.dtype)
        call = DecoderLayer.__call__
        if self.cfg.remat != "none":
            call = nnx.remat(call, policy=_REMAT_POLICIES[self.cfg.remat])
        for layer in self.layers:
            x_BLD = call(layer, x_BLD, cos_BLK, sin_BLK, mask_B1LL)
        return self.norm(x_BLD)

    def hidden_cached(self, input_ids_BL: jax.Array, positions_BL: jax.Array,
                      key_mask_BS: jax.Array, cache: KVCache, start: jax.Array | int
                      ) -> tuple[jax.Array, KVCache]:
        """Final-norm hidden states [B, L, D] of L new tokens at cache slots [start, start + L).

        Prefill is a call with the (left-padded) prompt at start 0; each decode step is a call
        with one token. A token at slot q attends to the slots k <= q that `key_mask_BS` marks
        as real (and, with a sliding window, k > q - window), so a row whose real tokens occupy
        contiguous slots sees exactly what `hidden` sees for the unpadded sequence.

        Args:
          input_ids_BL: the new tokens.
          positions_BL: their RoPE positions (e.g. 0 at the first real prompt token of a row).
          key_mask_BS: 1 on the slots that hold (or will hold) real tokens, 0 on padding.
          cache: keys and values [B, G, S, K] per layer, from `KVCache.zeros` or a previous call.
          start: the slot of the first new token (a traced scalar is fine).

        Returns:
          (hidden_BLD, the cache with the new keys and values written).
        """
        mask_B1LS = cached_attention_mask(key_mask_BS, start, input_ids_BL.shape[1],
                                          self.cfg.sliding_window)
        x_BLD = constrain(self.embed_tokens(input_ids_BL), _STEP_ACT)
        cos_BLK, sin_BLK = rope_cos_sin(self.cfg, positions_BL, x_BLD.dtype)
        ks, vs = [], []
        for layer, k_BGSK, v_BGSK in zip(self.layers, cache.k, cache.v, strict=True):
            x_BLD, k_BGSK, v_BGSK = layer.cached(x_BLD, cos_BLK, sin_BLK, mask_B1LS, k_BGSK,
                                                 v_BGSK, start)
            ks.append(k_BGSK)
            vs.append(v_BGSK)
        return self.norm(x_BLD), KVCache(tuple(ks), tuple(vs))

    def output_embedding(self) -> jax.Array:
        """The output projection W [D, V] in the compute dtype (tied or not)."""
        dtype = jnp.dtype(self.cfg.dtype)
        if self.lm_head is None:
            return self.embed_tokens.embedding[...].T.astype(dtype)
        return self.lm_head.kernel[...].astype(dtype)

    def logits(self, h_BLD: jax.Array) -> jax.Array:
        return constrain(h_BLD @ self.output_embedding(), ("act_batch", "act_length", "act_vocab"))

    def __call__(self, input_ids_BL, attention_mask_BL=None, *, positions_BL=None,
                 segment_ids_BL=None) -> jax.Array:
        return self.logits(self.hidden(input_ids_BL, attention_mask_BL,
                                       positions_BL=positions_BL, segment_ids_BL=segment_ids_BL))


class ScalarHeadModel(nnx.Module):
    """A decoder with a scalar head per token: reward models (read at the last real token) and
    value models (read per token). `score` maps to `score.weight` of Hugging Face's
    `*ForSequenceClassification` with one label."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.model = Transformer(cfg, rngs=rngs, lm_head=False)
        self.score = _dense(cfg, cfg.hidden_size, 1, ("embed", None), False, rngs)

    def __call__(self, input_ids_BL, attention_mask_BL=None, *, positions_BL=None,
                 segment_ids_BL=None) -> jax.Array:
        """Per-token scalars [B, L] in float32."""
        h_BLD = self.model.hidden(input_ids_BL, attention_mask_BL, positions_BL=positions_BL,
                                  segment_ids_BL=segment_ids_BL)
        return self.score(h_BLD)[..., 0].astype(jnp.float32)


def last_token_values(values_BL: jax.Array, attention_mask_BL: jax.Array) -> jax.Array:
    """Reads [B] values at the last real token of each row (left or right padding)."""
    idx_L = jnp.arange(values_BL.shape[1])
    last_B = jnp.max(jnp.where(attention_mask_BL > 0, idx_L, 0), axis=1)
    return jnp.take_along_axis(values_BL, last_B[:, None], axis=1)[:, 0]

