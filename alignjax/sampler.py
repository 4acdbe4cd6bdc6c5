"""Sampling with a KV cache, compiled once per shape: rollouts, best-of-N, rejection sampling.

    sampler = make_sampler(graphdef, cfg, max_new_tokens=128)
    out = sampler(params, prompts, jax.random.key(0), SamplingParams(top_p=0.95), n=4)
    batch = out.batch()  # input_ids, attention_mask, loss_mask: the trainer's inputs

Layout. Prompts are left-padded to a bucket of P tokens (`prompt_buckets`); the cache holds
P + T - 1 slots (T = `max_new_tokens`) and slot P + t holds generated token t. RoPE positions count
from a row's first real token, so every row's logits are those of its unpadded sequence, and
[prompt | response] is the left-padded sequence the trainer sees (`SampleResult.batch`).

Decoding. One compiled function per (batch, prompt bucket, n) shape of a sampler (T is fixed
per sampler): a prefill over the prompt, then a `jax.lax.while_loop` that decodes one token per
iteration and exits once every row has produced a stop token, or after T tokens. No token goes
back to the host in between. After its stop token a row emits the pad id under mask 0.

Sampling (`alignjax.draw`), in float32 and in transformers' order: temperature -> top-k ->
top-p -> min-p, each filter keeping at least one token (transformers' logits warpers with
`min_tokens_to_keep=1`); temperature 0 is greedy (argmax). The settings are traced scalars:
changing them does not recompile.

Log-probs of each sampled token: `logps` under the distribution it was drawn from (temperature
and filters applied; 0 for greedy), and `model_logps` under the unmodified model (temperature
1, no truncation), computed as `alignjax.objectives.token_logps` computes them: float32 logits
of the final hidden state minus their logsumexp.

Sharding: with `mesh=` the prompts are placed over the batch axes and the call is traced inside
`sharding.use(mesh, rules)`, so the cache is placed like the activations (batch over data and
fsdp, key/value heads over tensor); the parameters keep the shardings they were loaded with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignjax import sharding
from alignjax.data.chat import ChatRenderer
from alignjax.data.records import user_prompt
from alignjax.draw import GREEDY, SamplingParams, draw  # noqa: F401 (GREEDY re-exported)
from alignjax.models.config import ModelConfig
from alignjax.models.transformer import KVCache, segment_positions

SAMPLE = SamplingParams()  # plain sampling at temperature 1

FINISH_REASONS = ("stop", "length")  # SampleResult.finish_reason_B codes
# XLA:CPU sends matmuls to YNNPACK by default, which streams the weights of a few-row matmul
# (decoding) about half as fast as its Eigen path; keeping YNNPACK for reductions only makes
# decoding on CPU about 1.6x faster (benchmarks/generate_throughput.py measures both). It must
# be in XLA_FLAGS before JAX starts; the sample job (`alignjax.main`) sets it.
CPU_DECODE_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE"
DEFAULT_BUCKETS = (64, 128, 256, 512, 1024)




class SampleResult(NamedTuple):
    """Samples of a batch of B = prompts x n rows (row i * n + j is sample j of prompt i).

    Attributes:
      prompt_ids_BP, prompt_mask_BP: the left-padded prompts (repeated n times).
      tokens_BT: generated tokens; the pad id after a row's stop token.
      mask_BT: 1 on the response: the generated tokens up to and including the first stop token.
      logps_BT: log-probs of the tokens under the sampling distribution (0 where masked).
      model_logps_BT: log-probs under the model at temperature 1 without truncation (0 where
        masked); the trainer's `token_logps` of the same sequences up to float32 rounding
        (XLA:CPU rounds products of 2-56 rows differently from larger ones).
      finish_reason_B: index into `FINISH_REASONS`: 0 "stop" (a stop token), 1 "length".
      num_steps: tokens decoded per row before the loop ended (T, or fewer when every row
        stopped early); columns from num_steps on are padding.
    """

    prompt_ids_BP: jax.Array
    prompt_mask_BP: jax.Array
    tokens_BT: jax.Array
    mask_BT: jax.Array
    logps_BT: jax.Array
    model_logps_BT: jax.Array
    finish_reason_B: jax.Array
    num_steps: jax.Array

    def batch(self) -> dict[str, jax.Array]:
        """The trainer's view: input_ids, attention_mask [B, P + T] (prompt and response) and
        loss_mask (the response tokens)."""
        ids = jnp.concatenate([self.prompt_ids_BP, self.tokens_BT], axis=1)
        resp = self.mask_BT.astype(jnp.int32)
        mask = jnp.concatenate([self.prompt_mask_BP.astype(jnp.int32), resp], axis=1)
        loss = jnp.concatenate([jnp.zeros_like(self.prompt_mask_BP, jnp.int32), resp], axis=1)
        return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss}

    def finish_reasons(self) -> list[str]:
        return [FINISH_REASONS[int(r)] for r in np.asarray(self.finish_reason_B)]


# --------------------------------------------------------------------------------------------
# The compiled prefill + decode loop.
# --------------------------------------------------------------------------------------------


def _logits(model, h_BD: jax.Array) -> jax.Array:
    """float32 logits as the trainer computes them (`logprobs.token_logprobs_from_hidden`: the
    output projection in the compute dtype, float32 accumulation). A tied embedding is used in
    its stored [V, D] layout, so that no step transposes it."""
    if model.lm_head is None:
        w, spec = model.embed_tokens.embedding[...].astype(model.cfg.dtype), "bd,vd->bv"
    else:
        w, spec = model.lm_head.kernel[...].astype(model.cfg.dtype), "bd,dv->bv"
    out = jnp.promote_types(jnp.result_type(h_BD, w), jnp.float32)
    logits_BV = jnp.einsum(spec, h_BD, w, preferred_element_type=out).astype(out)
    return sharding.constrain(logits_BV, ("act_batch", None))


def decode(model, prompt_ids_BP: jax.Array, prompt_mask_BP: jax.Array, rng: jax.Array,
           knobs: Mapping[str, jax.Array], stop_ids: jax.Array, *, n: int, max_new_tokens: int,
           pad_id: int) -> SampleResult:
    """Prefill and decode loop (traced; see the module docstring). Prompts are left-padded.

    The prefill covers all prompt slots but the last; every loop iteration t runs one token
    (the last prompt token at t = 0, then generated token t - 1) and draws token t, so the
    draw is compiled once, inside the loop.
    """
    b, p = prompt_ids_BP.shape
    steps = max_new_tokens
    mask_BP = prompt_mask_BP.astype(jnp.int32)
    key_mask_BS = jnp.concatenate([mask_BP, jnp.ones((b, steps - 1), jnp.int32)], axis=1)
    cache = KVCache.zeros(model.cfg, b, p + steps - 1)
    if p > 1:
        cache = model.hidden_cached(prompt_ids_BP[:, :-1], segment_positions(mask_BP)[:, :-1],
                                    key_mask_BS, cache, 0)[1]
    if n > 1:  # one prefill per prompt, n continuations
        cache, key_mask_BS, prompt_ids_BP, mask_BP = jax.tree.map(
            lambda x: jnp.repeat(x, n, axis=0), (cache, key_mask_BS, prompt_ids_BP, mask_BP))
    lengths_B = jnp.sum(mask_BP, axis=1)
    last_B = prompt_ids_BP[:, -1]
    rows = b * n

    def cond(carry):
        t, _, state = carry
        return (t < steps) & ~jnp.all(state[4])

    def body(carry):
        t, cache, (tokens, mask, logps, model_logps, done) = carry
        prev_B = jax.lax.dynamic_index_in_dim(tokens, jnp.maximum(t - 1, 0), axis=1,
                                              keepdims=False)
        prev_B = jnp.where(t == 0, last_B, prev_B)
        h_B1D, cache = model.hidden_cached(prev_B[:, None], (lengths_B + t - 1)[:, None],
                                           key_mask_BS, cache, p - 1 + t)
        tok_B, lp_B, mlp_B = draw(_logits(model, h_B1D[:, 0]), knobs, jax.random.fold_in(rng, t))
        live_B = ~done
        tok_B = jnp.where(live_B, tok_B, pad_id)
        hit_B = live_B & jnp.isin(tok_B, stop_ids)
        put = lambda x_BT, x_B: x_BT.at[:, t].set(x_B)  # noqa: E731
        state = (put(tokens, tok_B), put(mask, live_B), put(logps, jnp.where(live_B, lp_B, 0.0)),
                 put(model_logps, jnp.where(live_B, mlp_B, 0.0)), done | hit_B)
        return t + 1, cache, state

    zeros_BT = jnp.zeros((rows, steps), jnp.float32)
    state = (jnp.full((rows, steps), pad_id, jnp.int32), jnp.zeros((rows, steps), bool),
             zeros_BT, zeros_BT, jnp.zeros(rows, bool))
    num_steps, _, state = jax.lax.while_loop(cond, body, (jnp.int32(0), cache, state))
    tokens, mask, logps, model_logps, done = state
    return SampleResult(prompt_ids_BP, mask_BP, tokens, mask.astype(jnp.int32), logps,
                        model_logps, jnp.where(done, 0, 1).astype(jnp.int32), num_steps)


# --------------------------------------------------------------------------------------------
# The host-side sampler: bucketing, checks, placement, one compilation per shape.
# --------------------------------------------------------------------------------------------


def pad_prompts(prompts: Sequence[Sequence[int]], buckets: Sequence[int], pad_id: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token-id prompts to the smallest bucket that holds the longest one.

    Raises:
      ValueError naming the prompt for an empty one, and `prompt_buckets` for one that is too
      long.
    """
    if not len(prompts):
        raise ValueError("prompts: no prompts given")
    lengths = [len(q) for q in prompts]
    for i, n in enumerate(lengths):
        if n == 0:
            raise ValueError(f"prompts[{i}] is empty: a prompt needs at least one token")
        if n > max(buckets):
            raise ValueError(f"prompts[{i}] has {n} tokens, more than the largest prompt bucket "
                             f"(prompt_buckets={tuple(buckets)})")
    length = min(b for b in buckets if b >= max(lengths))
    ids = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), np.int32)
    for i, q in enumerate(prompts):
        ids[i, length - len(q):] = np.asarray(q, np.int32)
        mask[i, length - len(q):] = 1
    return ids, mask


def _as_list(ids: int | Sequence[int] | None) -> list[int]:
    if ids is None:
        return []
    return [int(ids)] if isinstance(ids, (int, np.integer)) else [int(i) for i in ids]


class Sampler:
    """A compiled sampler for one model architecture; see `make_sampler`."""

    def __init__(self, graphdef: nnx.GraphDef, cfg: ModelConfig, *, max_new_tokens: int,
                 prompt_buckets: Sequence[int], stop_token_ids: Sequence[int], pad_token_id: int,
                 mesh: jax.sharding.Mesh | None, rules):
        self.cfg, self.max_new_tokens = cfg, max_new_tokens
        self.prompt_buckets = tuple(sorted(prompt_buckets))
        self.stop_token_ids, self.pad_token_id = tuple(stop_token_ids), pad_token_id
        self.mesh, self.rules = mesh, rules
        self.traces = 0  # compilations so far: one per (batch, prompt bucket, n)

        def run(params, ids_BP, mask_BP, rng, knobs, stop_ids, n):
            self.traces += 1
            return decode(nnx.merge(graphdef, params), ids_BP, mask_BP, rng, knobs, stop_ids,
                          n=n, max_new_tokens=max_new_tokens, pad_id=pad_token_id)

        self._run = jax.jit(run, static_argnums=(6,))
        # On a mesh: traced under its rules; several processes compile before they run
        self._run_on_mesh = None if mesh is None else sharding.under(mesh, self._run, rules)

    def __call__(self, params: Any, prompts: Sequence[Sequence[int]] | Mapping[str, Any],
                 rng: jax.Array | int, settings: SamplingParams = SAMPLE, *,
                 n: int = 1) -> SampleResult:
        """Samples `n` continuations of every prompt.

        Args:
          params: the model's parameters (`nnx.split(model)[1]`), placed as the caller likes.
          prompts: token-id lists (bucketed and left-padded here), or a left-padded batch
            {"input_ids", "attention_mask"} [B, P] (e.g. the data pipeline's prompt batches).
          rng: a `jax.random.key`, or an int seed; the same key gives the same samples.
          settings: temperature, top-k, top-p, min-p.
          n: samples per prompt (rows i * n ... i * n + n - 1 belong to prompt i).

        Returns:
          A `SampleResult` of B * n rows (device arrays).
        """
        if not isinstance(settings, SamplingParams):
            raise TypeError(f"settings: expected SamplingParams, got {type(settings).__name__}")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r}: samples per prompt must be an integer >= 1")
        if isinstance(prompts, Mapping):
            ids_BP, mask_BP = self._check_batch(prompts)
        else:
            ids_BP, mask_BP = pad_prompts(prompts, self.prompt_buckets, self.pad_token_id)
        longest = int(mask_BP.sum(axis=1).max())
        if longest + self.max_new_tokens > self.cfg.max_position_embeddings:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}: a prompt of {longest} "
                             f"tokens plus the new tokens exceeds the model's "
                             f"max_position_embeddings={self.cfg.max_position_embeddings}")
        rng = jax.random.key(rng) if isinstance(rng, (int, np.integer)) else rng
        stop_ids = np.asarray(self.stop_token_ids, np.int32)
        if self.mesh is None:
            return self._run(params, ids_BP, mask_BP, rng, settings.arrays(), stop_ids, n)
        batch = sharding.batch_sharding(self.mesh, self.rules)
        ways = int(np.prod([self.mesh.shape[a] for a in _axes(batch.spec[0])]))
        if len(ids_BP) % ways:
            raise ValueError(f"prompts: {len(ids_BP)} prompts do not split over the "
                             f"{ways} batch shards of the mesh; pass a multiple of {ways}")
        ids_BP, mask_BP = jax.device_put((ids_BP, mask_BP), batch)
        return self._run_on_mesh(params, ids_BP, mask_BP, rng, settings.arrays(), stop_ids, n)

    def _check_batch(self, prompts: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(prompts["input_ids"], np.int32)
        mask = np.asarray(prompts["attention_mask"], np.int32)
        if ids.ndim != 2 or ids.shape != mask.shape:
            raise ValueError(f"prompts: input_ids {ids.shape} and attention_mask {mask.shape} "
                             "must be the same [B, P] shape")
        empty = np.flatnonzero(mask.sum(axis=1) == 0)
        if len(empty):
            raise ValueError(f"prompts[{int(empty[0])}] is empty: a prompt needs at least one "
                             "token")
        if not np.all(mask[:, -1] == 1) or np.any(np.diff(mask, axis=1) < 0):
            raise ValueError("prompts: the batch must be left-padded (attention_mask 0...0 1...1)")
        return ids, mask


def _axes(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def make_sampler(graphdef: nnx.GraphDef, cfg: ModelConfig, *, max_new_tokens: int,
                 prompt_buckets: Sequence[int] = DEFAULT_BUCKETS,
                 stop_token_ids: int | Sequence[int] | None = None,
                 pad_token_id: int | None = None, mesh: jax.sharding.Mesh | None = None,
                 rules=sharding.DEFAULT_RULES) -> Sampler:
    """A sampler for models of `graphdef`: `sampler(params, prompts, rng, settings, n=1)`.

    Args:
      graphdef: `nnx.split(model)[0]` of a `Transformer`.
      cfg: its `ModelConfig` (positions, special tokens).
      max_new_tokens: T, the most tokens generated per row.
      prompt_buckets: prompt lengths compiled for; a batch is left-padded to the smallest
        bucket that holds its longest prompt.
      stop_token_ids: tokens that end a row (included in its response); default the model's
        EOS token(s); an empty sequence never stops early (every row gets T tokens).
      pad_token_id: written after a row's end and into prompt padding; default the model's pad
        token, else its first stop token.
      mesh: place the prompts over the batch axes of this mesh and trace under `rules`.
      rules: logical axis rules (`alignjax.sharding.DEFAULT_RULES`).

    Raises:
      ValueError naming the setting: max_new_tokens < 1 or not below the model's positions,
      bad prompt buckets, no stop token by default, no pad token.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: must be an integer >= 1")
    if max_new_tokens >= cfg.max_position_embeddings:
        raise ValueError(f"max_new_tokens={max_new_tokens}: leaves no room for a prompt within "
                         f"the model's max_position_embeddings={cfg.max_position_embeddings}")
    buckets = tuple(prompt_buckets)
    if not buckets or any(not isinstance(b, (int, np.integer)) or b < 1 for b in buckets):
        raise ValueError(f"prompt_buckets={buckets!r}: expected positive integer lengths")
    stops = _as_list(cfg.eos_token_id if stop_token_ids is None else stop_token_ids)
    if stop_token_ids is None and not stops:
        raise ValueError("stop_token_ids: none given and the model config names no EOS token; "
                         "pass them, or () to always generate max_new_tokens")
    pad = pad_token_id if pad_token_id is not None else cfg.pad_token_id
    if pad is None and not stops:
        raise ValueError("pad_token_id: none given, and neither the model config nor the stop "
                         "tokens name one")
    pad = stops[0] if pad is None else int(pad)
    return Sampler(graphdef, cfg, max_new_tokens=max_new_tokens, prompt_buckets=buckets,
                   stop_token_ids=stops, pad_token_id=pad, mesh=mesh, rules=rules)


# --------------------------------------------------------------------------------------------
# Text in, text out (notebooks).
# --------------------------------------------------------------------------------------------

_SAMPLERS: dict[tuple, Sampler] = {}  # reused across `generate` calls: compiled once per shape


def generate(model, tokenizer, prompts_or_chats, *, max_new_tokens: int = 256,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
             n: int = 1, seed: int = 0, batch_size: int = 8,
             prompt_buckets: Sequence[int] = DEFAULT_BUCKETS,
             stop_token_ids: Sequence[int] | None = None, chat_template: str | None = None):
    """Chat completions: each prompt is rendered with the chat template, then sampled.

    Args:
      model: a `Transformer`.
      tokenizer: its tokenizer (with a chat template, or pass `chat_template`).
      prompts_or_chats: a string (one user turn), a chat (a list of {"role", "content"}
        messages ending with a non-assistant turn), or a list of strings and chats.
      max_new_tokens, temperature, top_k, top_p, min_p: as `make_sampler` and
        `SamplingParams` (the default, temperature 0, is greedy).
      n: samples per prompt.
      seed: the same seed gives the same text.
      batch_size: prompts per compiled call.
      prompt_buckets: prompt lengths compiled for.
      stop_token_ids: default the model's and the tokenizer's EOS tokens.
      chat_template: a Jinja template overriding the tokenizer's.

    Returns:
      The response texts (the stop token and special tokens left out): one string per prompt,
      or a list of n strings per prompt when n > 1; a single prompt gives that entry alone.
    """
    single = isinstance(prompts_or_chats, str) or (
        len(prompts_or_chats) > 0 and isinstance(prompts_or_chats[0], Mapping))
    items = [prompts_or_chats] if single else list(prompts_or_chats)
    renderer = ChatRenderer(tokenizer, chat_template)
    ids = [tokenizer(renderer.prompt(user_prompt(x) if isinstance(x, str) else x),
                     add_special_tokens=False).input_ids for x in items]
    cfg = model.cfg
    if stop_token_ids is None:
        stop_token_ids = sorted({*_as_list(cfg.eos_token_id), *_as_list(tokenizer.eos_token_id)})
    graphdef, params = nnx.split(model)
    key = (graphdef, cfg, max_new_tokens, tuple(prompt_buckets), tuple(stop_token_ids),
           tokenizer.pad_token_id)
    if key not in _SAMPLERS:
        _SAMPLERS[key] = make_sampler(graphdef, cfg, max_new_tokens=max_new_tokens,
                                      prompt_buckets=prompt_buckets,
                                      stop_token_ids=stop_token_ids,
                                      pad_token_id=tokenizer.pad_token_id)
    sampler = _SAMPLERS[key]
    settings = SamplingParams(temperature, top_k, top_p, min_p)
    size = min(batch_size, len(ids))
    texts = []
    for start in range(0, len(ids), size):
        chunk = ids[start:start + size]
        real = len(chunk)
        chunk = chunk + [chunk[-1]] * (size - real)  # one compiled batch shape
        out = jax.device_get(sampler(params, chunk, jax.random.fold_in(jax.random.key(seed),
                                                                       start), settings, n=n))
        for r in range(real * n):
            toks = [int(t) for t in out.tokens_BT[r, :int(out.mask_BT[r].sum())]]
            if toks and toks[-1] in sampler.stop_token_ids:
                toks = toks[:-1]
            texts.append(tokenizer.decode(toks, skip_special_tokens=True))
    grouped = texts if n == 1 else [texts[i:i + n] for i in range(0, len(texts), n)]
    return grouped[0] if single else grouped
