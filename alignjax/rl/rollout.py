"""Rollouts: prompts -> samples -> scores -> reference, policy and critic forwards -> arrays.

`Rollouts(...)` compiles the passes once; `rollouts.collect(params, ...)` returns one `Rollout`
of B = prompts x n rows (row i * n + j is sample j of prompt i), all arrays on the host, laid
out as the trainer sees them: [prompt | response] left-padded prompts and right-padded
responses [B, L], per-token quantities aligned to tokens (`alignjax.logprobs`).

The sequence score lands on the last real response token, found from the response mask
(`last_response_index`), never by searching the ids for a pad or EOS id: it is right when pad
equals EOS, with left-padded prompts, with an EOS inside the prompt, with custom stop tokens and
for responses cut at `max_new_tokens` without EOS. A reward model is read at the same position.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

from alignjax import evaluate as evaluate_lib
from alignjax import sampler as sampler_lib
from alignjax import sharding
from alignjax.logprobs import (
    token_entropy_from_hidden,
    token_logprobs_from_hidden,
    values_before_tokens,
)
from alignjax.objectives import LOGPROB_CHUNK, token_logps
from alignjax.rl.rewards import RewardFn


def last_response_index(mask_BL: np.ndarray | jax.Array) -> np.ndarray:
    """[B] index of the last position where the response mask is 1 (-1 for an empty row)."""
    mask_BL = np.asarray(mask_BL) != 0
    length = mask_BL.shape[1]
    last_B = length - 1 - np.argmax(mask_BL[:, ::-1], axis=1)
    return np.where(mask_BL.any(axis=1), last_B, -1)


def score_tokens(scores_B: np.ndarray, mask_BL: np.ndarray) -> np.ndarray:
    """The sequence scores placed on the last real response token of each row, 0 elsewhere."""
    out_BL = np.zeros(np.shape(mask_BL), np.float32)
    last_B = last_response_index(mask_BL)
    rows = np.flatnonzero(last_B >= 0)
    out_BL[rows, last_B[rows]] = np.asarray(scores_B, np.float32)[rows]
    return out_BL


class Rollout(NamedTuple):
    """One batch of samples and everything the updates need, as host arrays.

    Attributes:
      input_ids, attention_mask, loss_mask: [B, L]; loss_mask is 1 on the response tokens.
      logps: log pi_old of each token (the policy that sampled, trainer forward) [B, L].
      ref_logps: log pi_ref of each token [B, L].
      entropy: entropy of the policy's next-token distribution at each token [B, L].
      values: the critic's V of the state before each token [B, L] (zeros without a critic).
      scores: the sequence score [B] (reward, minus the no-EOS penalty).
      raw_scores: the reward before the penalty [B].
      eos: True where the response ended with a stop token [B].
      prompts, responses: the texts.
      seconds: wall time per phase (sampling, scoring, reference, policy, critic).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray
    logps: np.ndarray
    ref_logps: np.ndarray
    entropy: np.ndarray
    values: np.ndarray
    scores: np.ndarray
    raw_scores: np.ndarray
    eos: np.ndarray
    prompts: list[str]
    responses: list[str]
    seconds: dict[str, float]


class RewardModel:
    """A Bradley-Terry reward model trained by this library (objective "rm", a scalar head),
    read at the last real response token of the [prompt | response] ids."""

    def __init__(self, model, mesh):
        graphdef, self.params = nnx.split(model)
        self.mesh = mesh
        self._values = sharding.under(mesh, jax.jit(
            lambda p, ids, mask: nnx.merge(graphdef, p)(ids, mask)))

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        placed = _placed(batch, self.mesh)
        values_BL = sharding.to_host(self._values(
            self.params, placed["input_ids"], placed["attention_mask"]))
        last_B = last_response_index(batch["loss_mask"])
        return values_BL[np.arange(len(last_B)), np.maximum(last_B, 0)].astype(np.float32)


def _placed(batch: dict[str, np.ndarray], mesh) -> dict[str, Any]:
    """The batch as global arrays, rows over the mesh's batch axes (every process holds it
    whole); unchanged without a mesh."""
    return batch if mesh is None else evaluate_lib.to_device(batch, mesh)


def _timed(seconds: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
    return out


class Forwards:
    """The jitted forward passes of a rollout on a [prompt | response] batch.

    `policy(params, batch) -> (logps_BL, entropy_BL)`, `reference(params, batch) -> logps_BL`
    (both as `objectives.token_logps`, which the objectives differentiate) and, with a critic,
    `critic(params, batch) -> values_BL` aligned to tokens (`values_before_tokens`).
    """

    def __init__(self, graphdef, mesh, critic_graphdef=None):
        self.mesh = mesh

        def policy(params, batch):
            # as `objectives.token_logps`, and the entropy from the same hidden states
            model = nnx.merge(graphdef, params)
            h_BLD = model.hidden(batch["input_ids"], batch["attention_mask"])
            w_DV = model.output_embedding()
            logps = token_logprobs_from_hidden(h_BLD, w_DV, batch["input_ids"],
                                               chunk_size=LOGPROB_CHUNK)
            return logps, token_entropy_from_hidden(h_BLD, w_DV, chunk_size=LOGPROB_CHUNK)

        self.policy = sharding.under(mesh, jax.jit(policy))
        self.reference = sharding.under(mesh, jax.jit(
            lambda p, b: token_logps(nnx.merge(graphdef, p), b)))
        self.critic = None
        if critic_graphdef is not None:
            self.critic = sharding.under(mesh, jax.jit(lambda p, b: values_before_tokens(
                nnx.merge(critic_graphdef, p)(b["input_ids"], b["attention_mask"]))))


def assemble(forwards: Forwards, params, ref_params, batch: dict[str, np.ndarray],
             eos: np.ndarray, raw_scores: np.ndarray, *, critic_params=None,
             no_eos_penalty: float = 0.0, prompts: Sequence[str] = (),
             responses: Sequence[str] = (), seconds: dict[str, float] | None = None
             ) -> Rollout:
    """The forward passes over a scored batch, and the `Rollout` of it.

    Args:
      forwards: the compiled passes.
      params, ref_params, critic_params: policy, reference and critic (None: no critic).
      batch: input_ids, attention_mask, loss_mask [B, L] (`SampleResult.batch`).
      eos: [B] True where the response ends with a stop token.
      raw_scores: [B] the reward.
      no_eos_penalty: subtracted from the score where `eos` is False.
      prompts, responses: the texts (bookkeeping).
      seconds: phase times so far; the forwards add "reference", "policy" and "critic".
    """
    seconds = {} if seconds is None else seconds
    batch = {k: np.asarray(batch[k]) for k in ("input_ids", "attention_mask", "loss_mask")}
    raw = np.asarray(raw_scores, np.float32)
    eos = np.asarray(eos, bool)
    scores = raw - np.float32(no_eos_penalty) * (~eos).astype(np.float32)
    placed = _placed(batch, forwards.mesh)
    ref_logps = _timed(seconds, "reference", lambda: forwards.reference(ref_params, placed))
    logps, entropy = _timed(seconds, "policy", lambda: forwards.policy(params, placed))
    mask = batch["loss_mask"]
    host = lambda x: np.where(mask != 0, sharding.to_host(x), 0.0)  # noqa: E731
    values = np.zeros(mask.shape, np.float32)
    if forwards.critic is not None and critic_params is not None:
        values = host(_timed(seconds, "critic", lambda: forwards.critic(critic_params, placed)))
    return Rollout(batch["input_ids"], batch["attention_mask"], mask,
                   host(logps).astype(np.float32), host(ref_logps).astype(np.float32),
                   host(entropy).astype(np.float32), values.astype(np.float32),
                   scores.astype(np.float32), raw, eos, list(prompts), list(responses),
                   seconds)


class Rollouts:
    """Samples, scores and runs the forward passes of a rollout (see the module docstring).

    Args:
      graphdef: the policy's structure (the sampler and the trainer share its parameters).
      cfg: the policy's ModelConfig.
      tokenizer: its tokenizer (prompts are token lists already; responses are decoded).
      mesh: the mesh of the run.
      max_new_tokens: T.
      prompt_buckets: prompt lengths compiled for.
      settings: the sampling settings (temperature 1, no truncation: the trainer's log-probs
        are then those of the sampling distribution).
      reward: a Python reward of (prompt, response) texts, or a `RewardModel`.
      no_eos_penalty: subtracted from the score of a response that ends without a stop token.
      critic_graphdef: the critic's structure, or None (no critic).
    """

    def __init__(self, graphdef, cfg, tokenizer, mesh, *, max_new_tokens: int,
                 prompt_buckets: Sequence[int], settings: sampler_lib.SamplingParams,
                 reward: RewardFn | RewardModel, no_eos_penalty: float = 0.0,
                 critic_graphdef=None):
        self.tokenizer, self.settings, self.reward = tokenizer, settings, reward
        self.no_eos_penalty = no_eos_penalty
        stops = sorted({*sampler_lib._as_list(cfg.eos_token_id),
                        *sampler_lib._as_list(tokenizer.eos_token_id)})
        self.sampler = sampler_lib.make_sampler(
            graphdef, cfg, max_new_tokens=max_new_tokens, prompt_buckets=tuple(prompt_buckets),
            stop_token_ids=stops, pad_token_id=tokenizer.pad_token_id, mesh=mesh)
        self.forwards = Forwards(graphdef, mesh, critic_graphdef)

    def decode(self, tokens: np.ndarray, length: int) -> str:
        toks = [int(t) for t in tokens[:length]]
        if toks and toks[-1] in self.sampler.stop_token_ids:
            toks = toks[:-1]
        return self.tokenizer.decode(toks, skip_special_tokens=True)

    def sample(self, params, prompt_ids: Sequence[Sequence[int]], rng: jax.Array, *, n: int):
        """Samples only: (host batch, eos [B], response texts)."""
        host = sharding.to_host(self.sampler(params, prompt_ids, rng, self.settings, n=n))
        batch = {k: np.asarray(v) for k, v in jax.device_get(host.batch()).items()}
        eos = np.asarray(host.finish_reason_B) == 0
        lengths = np.asarray(host.mask_BT).sum(axis=1)
        texts = [self.decode(host.tokens_BT[r], int(lengths[r])) for r in range(len(lengths))]
        return batch, eos, texts

    def score(self, batch, prompts: list[str], responses: list[str]) -> np.ndarray:
        if isinstance(self.reward, RewardModel):
            return self.reward(batch)
        return np.asarray(self.reward(prompts, responses), np.float32)

    def collect(self, params, ref_params, prompt_ids: Sequence[Sequence[int]],
                prompt_texts: Sequence[str], rng: jax.Array, *, n: int,
                critic_params=None) -> Rollout:
        """One rollout of `n` samples per prompt (see `Rollout`)."""
        seconds: dict[str, float] = {}
        batch, eos, responses = _timed(seconds, "sampling",
                                       lambda: self.sample(params, prompt_ids, rng, n=n))
        prompts = [prompt_texts[r // n] for r in range(len(responses))]
        raw = _timed(seconds, "scoring", lambda: self.score(batch, prompts, responses))
        return assemble(self.forwards, params, ref_params, batch, eos, raw,
                        critic_params=critic_params, no_eos_penalty=self.no_eos_penalty,
                        prompts=prompts, responses=responses, seconds=seconds)
