"""Objectives: thin glue from a model and a batch to a loss (forward -> log-probs -> loss).

`OBJECTIVES` maps each `config.objective` to a factory whose keyword-only parameters are the
`config.loss` keys, with their defaults (`loss_defaults`); a name "package.module:factory" names
a factory defined elsewhere (a loss in one file: configs/dpop.py). `make(name, loss_config)`
checks the keys and builds the `alignjax.steps.Objective`, which declares the batch layout
(`inputs`), the model (`head`) and the reference quantities (`reference`) the runner provides.

Batch fields (numpy or jax arrays, leading axis B):
  sft / correction: input_ids, attention_mask, loss_mask (1 on the trained tokens), and
    optionally segment_ids, positions (packed examples).
  pair: chosen_input_ids, chosen_attention_mask, chosen_loss_mask and the same for rejected;
    ref_chosen_logps, ref_rejected_logps [B] (the `reference` quantities of the DPO family)
    when the runner caches them.
  unpaired: input_ids, attention_mask, loss_mask, label [B] (True = desirable) and the
    mismatched sequences kl_input_ids, kl_attention_mask, kl_loss_mask
    (`alignjax.data.as_unpaired`); ref_logps, ref_kl_logps [B] when cached.

  rollout (the RL objectives ppo, grpo, rloo, reinforce and the critic's value): see the RL
    section below.

Frozen inputs: None, or a `Frozen(graphdef, params)` reference model when the reference
quantities are not cached.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import numbers
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from alignjax import losses
from alignjax.logprobs import (
    concat_pair,
    masked_count,
    masked_sum,
    sequence_lengths,
    sequence_logprobs,
    split_pair,
    target_mask,
    token_logprobs_from_hidden,
    values_before_tokens,
)
from alignjax.models import last_token_values
from alignjax.steps import Batch, Objective

LOGPROB_CHUNK = 128  # sequence positions per chunk of vocabulary logits
_LM_FIELDS = ("input_ids", "attention_mask", "loss_mask")


class Frozen(NamedTuple):
    """A model that does not train (the DPO reference), as a pytree of arrays."""

    graphdef: Any
    params: Any

    def model(self):
        return nnx.merge(self.graphdef, jax.lax.stop_gradient(self.params))


# ----------------------------------------------------------------------------- log-probs


def token_logps(model, batch: dict, prefix: str = "") -> jax.Array:
    """Shifted per-token log-probs [B, L] without materialising B x L x V logits."""
    ids = batch[prefix + "input_ids"]
    h_BLD = model.hidden(ids, batch[prefix + "attention_mask"],
                         positions_BL=batch.get(prefix + "positions"),
                         segment_ids_BL=batch.get(prefix + "segment_ids"))
    return token_logprobs_from_hidden(h_BLD, model.output_embedding(), ids,
                                      chunk_size=LOGPROB_CHUNK)


def _concat(batch: dict, first: str, second: str) -> dict:
    """The sequences `first*` over `second*` as one 2B batch (one forward pass)."""
    return concat_pair({k: batch[first + k] for k in _LM_FIELDS},
                       {k: batch[second + k] for k in _LM_FIELDS})


def pair_logps(model, batch: dict, *, average: bool = False):
    """Summed (or averaged) completion log-probs of chosen and rejected, one forward pass."""
    both = _concat(batch, "chosen_", "rejected_")
    seq_B2 = sequence_logprobs(token_logps(model, both), both["loss_mask"], average=average)
    return split_pair(seq_B2)


def _reference(batch: dict, frozen: Frozen | None, reference: Callable, names: tuple[str, ...]):
    """The reference quantities `names`: cached in the batch, else from the frozen model."""
    if all(name in batch for name in names):
        return tuple(jax.lax.stop_gradient(batch[name]) for name in names)
    if frozen is None:
        raise ValueError(f"this objective needs a reference model or cached reference "
                         f"quantities {names} (config.ref_cache)")
    out = reference(frozen.model(), batch)
    return tuple(jax.lax.stop_gradient(out[name]) for name in names)


def _rows(batch: dict, key: str = "input_ids") -> jax.Array:
    return jnp.asarray(batch[key].shape[0], jnp.float32)


def _num_pairs(batch: dict) -> jax.Array:
    return _rows(batch, "chosen_input_ids")


def _trained_tokens(batch: dict) -> jax.Array:
    return masked_count(target_mask(batch["loss_mask"]))


def _share(loss: jax.Array, rows: jax.Array, total: jax.Array) -> jax.Array:
    """Row-mean losses: weight a micro-batch by its share of the whole batch's rows."""
    return loss * rows / total


def _check(key: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"config.loss.{key}={value!r}: expected {expected}")


def _number(key: str, value: Any, low: float, high: float = float("inf"), *,
            open_low: bool = False, open_high: bool = False) -> None:
    """Checks that `value` is a number in the interval [low, high] (ends open if asked)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and (value > low if open_low else value >= low)
    ok = ok and (value < high if open_high else value <= high)
    interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    _check(key, value, ok, f"a number in {interval}")


def _beta(beta: Any) -> None:
    _number("beta", beta, 0.0, open_low=True)


# ----------------------------------------------------------------------------- objectives


def _sft_loss(model, batch, frozen, rng, total):
    return losses.sft_loss(token_logps(model, batch), batch["loss_mask"], normalizer=total)


def sft() -> Objective:
    """Supervised fine-tuning: token-mean NLL of the trained tokens (`losses.sft_loss`).

    Pair data gives its chosen side (`inputs="sft"`); exact under gradient accumulation.
    """
    return Objective(loss=_sft_loss, count=_trained_tokens, inputs="sft")


def aligner() -> Objective:
    """Aligner: SFT of the correction given question and answer (Ji et al., 2024).

    The tokenizer's loss mask of a correction example covers the correction and its EOS only,
    so this is `losses.aligner_loss` (the token mean over the correction tokens).
    """
    return Objective(loss=_sft_loss, count=_trained_tokens, inputs="correction")


def rm(*, center_coef: float = 0.0) -> Objective:
    """Bradley-Terry reward model on a scalar head (`losses.bradley_terry_loss`).

    Args:
      center_coef: weight of the penalty mean (r_w + r_l)^2 that keeps rewards centred (TRL's
        `center_rewards_coefficient`); 0 turns it off.
    """
    _number("center_coef", center_coef, 0.0)

    def loss(model, batch, frozen, rng, total):
        both = _concat(batch, "chosen_", "rejected_")
        values_BL = model(both["input_ids"], both["attention_mask"])
        chosen, rejected = split_pair(last_token_values(values_BL, both["attention_mask"]))
        value, metrics = losses.bradley_terry_loss(chosen, rejected, center_coef=center_coef)
        return _share(value, _num_pairs(batch), total), metrics

    return Objective(loss=loss, count=_num_pairs, inputs="pair", head="scalar")


def _pair_reference(model, batch: Batch) -> dict[str, jax.Array]:
    chosen, rejected = pair_logps(model, batch)
    return {"ref_chosen_logps": chosen, "ref_rejected_logps": rejected}


def reference_pairs(loss_fn: Callable, *, length_normalised: bool = False) -> Objective:
    """A DPO-family objective: `loss_fn(policy_w, policy_l, ref_w, ref_l[, lengths])`.

    Summed completion log-probs under the policy and the reference; with `length_normalised`,
    the completion lengths are passed too (`chosen_lengths_B`, `rejected_lengths_B`).
    """

    def loss(model, batch, frozen, rng, total):
        chosen, rejected = pair_logps(model, batch)
        ref_chosen, ref_rejected = _reference(batch, frozen, _pair_reference,
                                              ("ref_chosen_logps", "ref_rejected_logps"))
        lengths = {}
        if length_normalised:
            lengths = {"chosen_lengths_B": sequence_lengths(batch["chosen_loss_mask"]),
                       "rejected_lengths_B": sequence_lengths(batch["rejected_loss_mask"])}
        value, metrics = loss_fn(chosen, rejected, ref_chosen, ref_rejected, **lengths)
        # KL(policy || reference) estimate on the chosen completions, per sequence (k1).
        metrics = {**metrics, "dpo/kl_chosen": jnp.mean(chosen - ref_chosen)}
        return _share(value, _num_pairs(batch), total), metrics

    return Objective(loss=loss, count=_num_pairs, inputs="pair", reference=_pair_reference)


def dpo(*, beta: float = 0.1, label_smoothing: float = 0.0) -> Objective:
    """DPO, or conservative DPO with `label_smoothing` > 0 (`losses.dpo_loss`).

    Args:
      beta: inverse temperature of the implicit reward (TRL's default 0.1).
      label_smoothing: eps in [0, 0.5], the assumed rate of flipped labels (cDPO).
    """
    _beta(beta)
    _number("label_smoothing", label_smoothing, 0.0, 0.5)
    return reference_pairs(functools.partial(losses.dpo_loss, beta=beta,
                                              label_smoothing=label_smoothing))


def robust_dpo(*, beta: float = 0.1, label_smoothing: float = 0.1) -> Objective:
    """Robust DPO, unbiased under labels flipped with rate `label_smoothing`.

    Args:
      beta: inverse temperature.
      label_smoothing: the flip rate eps in [0, 0.5); 0 is plain DPO (`losses.robust_dpo_loss`).
    """
    _beta(beta)
    _number("label_smoothing", label_smoothing, 0.0, 0.5, open_high=True)
    return reference_pairs(functools.partial(losses.robust_dpo_loss, beta=beta,
                                              label_smoothing=label_smoothing))


def ipo(*, beta: float = 0.1, average_logps: bool = False) -> Objective:
    """IPO: the margin regressed onto 1 / (2 beta) (`losses.ipo_loss`).

    Args:
      beta: the regularisation tau of Azar et al. (2023).
      average_logps: False: summed log-ratios, (Delta - 1/(2 beta))^2, as the IPO paper, the DPO
        reference code and OpenRLHF. True: each log-ratio divided by its completion length, as
        TRL (`loss_type="ipo"`).
    """
    _beta(beta)
    _check("average_logps", average_logps, isinstance(average_logps, bool), "true or false")
    return reference_pairs(functools.partial(losses.ipo_loss, beta=beta),
                            length_normalised=average_logps)


def hinge(*, beta: float = 0.1) -> Objective:
    """SLiC / RSO hinge on the reference-normalised margin (`losses.hinge_loss`).

    Args:
      beta: inverse margin.
    """
    _beta(beta)
    return reference_pairs(functools.partial(losses.hinge_loss, beta=beta))


def simpo(*, beta: float = 0.1, gamma: float = 0.5, label_smoothing: float = 0.0) -> Objective:
    """SimPO: reference-free, length-normalised rewards with a target margin.

    Defaults as TRL's `CPOConfig` (the SimPO paper tunes beta in [2, 2.5]); pure SimPO, without
    TRL's `cpo_alpha` NLL term (`losses.simpo_loss`).

    Args:
      beta: reward scale.
      gamma: target reward margin.
      label_smoothing: eps in [0, 0.5], as in cDPO.
    """
    _beta(beta)
    _number("gamma", gamma, 0.0)
    _number("label_smoothing", label_smoothing, 0.0, 0.5)

    def loss(model, batch, frozen, rng, total):
        chosen, rejected = pair_logps(model, batch, average=True)
        value, metrics = losses.simpo_loss(chosen, rejected, beta=beta, gamma=gamma,
                                           label_smoothing=label_smoothing)
        return _share(value, _num_pairs(batch), total), metrics

    return Objective(loss=loss, count=_num_pairs, inputs="pair")


def _orpo_prepare(model, batch, frozen) -> dict[str, jax.Array]:
    """The whole batch's count of chosen prompt + response targets (the NLL's denominator)."""
    tokens = masked_count(target_mask(batch["chosen_attention_mask"]))
    return {"orpo_nll_tokens": jnp.full(batch["chosen_input_ids"].shape[:1], tokens)}


def orpo(*, beta: float = 0.1, nll: str = "full") -> Objective:
    """ORPO: NLL of the chosen sequence plus the odds-ratio term (`losses.orpo_loss`).

    Args:
      beta: lambda, the weight of the odds-ratio term (TRL's default 0.1).
      nll: "full": the token mean NLL over the prompt and response tokens of the chosen
        sequences, padding masked, across the whole batch (TRL's `ORPOTrainer`, exact under
        gradient accumulation through `prepare`). "completion": the mean over pairs of each
        chosen completion's mean token NLL.
    """
    _beta(beta)
    _check("nll", nll, nll in ("full", "completion"), "'full' or 'completion'")

    def loss(model, batch, frozen, rng, total):
        both = _concat(batch, "chosen_", "rejected_")
        logps_BL = token_logps(model, both)
        chosen, rejected = split_pair(sequence_logprobs(logps_BL, both["loss_mask"],
                                                        average=True))
        pairs = _num_pairs(batch)
        if nll == "full":
            if "orpo_nll_tokens" not in batch:  # a whole batch (evaluation): count it here
                batch = {**batch, **_orpo_prepare(model, batch, frozen)}
            chosen_logps_BL, _ = split_pair(logps_BL)
            chosen_mask_BL, _ = split_pair(target_mask(both["attention_mask"]))
            nll_sum = -masked_sum(chosen_logps_BL, chosen_mask_BL)
            # orpo_loss's result is scaled by pairs / total below; undo it for the token mean.
            chosen_nll = nll_sum / batch["orpo_nll_tokens"][0] * total / pairs
        else:
            chosen_nll = jnp.mean(-chosen)
        value, metrics = losses.orpo_loss(chosen, rejected, chosen_nll, beta=beta)
        return _share(value, pairs, total), metrics

    return Objective(loss=loss, count=_num_pairs, inputs="pair",
                     prepare=_orpo_prepare if nll == "full" else None)


def _unpaired_logps(model, batch: dict) -> tuple[jax.Array, jax.Array]:
    """Summed completion log-probs of the examples and of their mismatched (KL) completions."""
    both = _concat(batch, "", "kl_")
    return split_pair(sequence_logprobs(token_logps(model, both), both["loss_mask"]))


def _kto_reference(model, batch: Batch) -> dict[str, jax.Array]:
    logps, kl_logps = _unpaired_logps(model, batch)
    return {"ref_logps": logps, "ref_kl_logps": kl_logps}


def _kto_prepare(model, batch, frozen) -> dict[str, jax.Array]:
    """KTO's reference point z over the whole batch (and the reference log-probs if not cached).

    The policy's log-probs of the mismatched completions, without gradient, in one forward pass
    of the whole batch: z must not depend on how the step splits the batch.
    """
    names = ("ref_logps", "ref_kl_logps")
    refs = {}
    if not all(n in batch for n in names):
        if frozen is None:
            raise ValueError(f"kto needs a reference model or cached reference quantities "
                             f"{names} (config.ref_cache)")
        refs = _kto_reference(frozen.model(), batch)
    ref_kl_logps = refs["ref_kl_logps"] if refs else batch["ref_kl_logps"]
    kl = {k: batch["kl_" + k] for k in _LM_FIELDS}
    policy_kl_logps = sequence_logprobs(token_logps(model, kl), kl["loss_mask"])
    z = losses.kto_reference_point(policy_kl_logps, ref_kl_logps)
    return {**refs, "kto_reference_point": jnp.full(policy_kl_logps.shape, z)}


def kto(*, beta: float = 0.1, desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0) -> Objective:
    """KTO on unpaired examples, with the mismatched-completion KL reference point.

    The examples come from `alignjax.data.as_unpaired` (pairs: chosen -> desirable, rejected ->
    undesirable), each with the completion of an example of another prompt (kl_* fields).
    z = max(0, mean_batch [S_theta(y') - S_ref(y')]) is computed by `prepare` over the whole
    batch before it is split into micro-batches; `losses.kto_loss` gives the rest.

    Args:
      beta: inverse temperature (TRL's default 0.1).
      desirable_weight: lambda_D.
      undesirable_weight: lambda_U.
    """
    _beta(beta)
    _number("desirable_weight", desirable_weight, 0.0)
    _number("undesirable_weight", undesirable_weight, 0.0)

    def loss(model, batch, frozen, rng, total):
        if "kto_reference_point" not in batch:  # a whole batch (evaluation): z from it
            batch = {**batch, **jax.lax.stop_gradient(_kto_prepare(model, batch, frozen))}
        logps = sequence_logprobs(token_logps(model, batch), batch["loss_mask"])
        value, metrics = losses.kto_loss(
            logps, batch["ref_logps"], batch["label"], beta=beta,
            reference_point=batch["kto_reference_point"][0], desirable_weight=desirable_weight,
            undesirable_weight=undesirable_weight)
        return _share(value, _rows(batch), total), metrics

    return Objective(loss=loss, count=_rows, inputs="unpaired", reference=_kto_reference,
                     prepare=_kto_prepare)


# ----------------------------------------------------------------------------- RL (rollouts)
# The rollout batch (`alignjax.rl.rollout`): input_ids, attention_mask, loss_mask (1 on the
# response tokens) [B, L]; old_logps, ref_logps [B, L] (rollout policy and reference, aligned to
# tokens); kl_coef [B] (the KL coefficient of a KL placed in the loss, 0 when it is in the
# reward); then per algorithm advantages [B, L] (ppo, grpo), returns and baseline [B]
# (reinforce, rloo), max_tokens [B] (grpo's "unnormalized" aggregation), old_values and
# value_targets [B, L] (the critic).

_KL_ESTIMATORS = ("k1", "k2", "k3")


def _kl_estimator(kl_estimator: Any) -> None:
    _check("kl_estimator", kl_estimator, kl_estimator in _KL_ESTIMATORS, "k1, k2 or k3")


def _clip(clip_eps: Any, clip_eps_high: Any, dual_clip: Any = None) -> None:
    _number("clip_eps", clip_eps, 0.0, 1.0, open_low=True, open_high=True)
    if clip_eps_high is not None:
        _number("clip_eps_high", clip_eps_high, 0.0, open_low=True)
    if dual_clip is not None:
        _number("dual_clip", dual_clip, 1.0, open_low=True)


def _with_kl(value, metrics, logps, batch, kl_estimator, *, sequence_mean, normalizer):
    """Adds kl_coef * the KL loss term, reduced like the policy loss (zero coef: reward KL)."""
    kl, kl_metrics = losses.kl_loss(logps, batch["ref_logps"], batch["loss_mask"],
                                    estimator=kl_estimator, sequence_mean=sequence_mean,
                                    normalizer=normalizer)
    return value + jax.lax.stop_gradient(batch["kl_coef"][0]) * kl, {**metrics, **kl_metrics}


def ppo(*, clip_eps: float = 0.2, clip_eps_high: float | None = None,
        dual_clip: float | None = None, kl_estimator: str = "k1") -> Objective:
    """PPO-clip policy loss on per-token advantages (`losses.ppo_policy_loss`), token mean.

    Plus `kl_coef * losses.kl_loss` when the KL is placed in the loss (`kl_coef` 0 otherwise).

    Args:
      clip_eps: eps (eps_low with `clip_eps_high`).
      clip_eps_high: eps_high of an asymmetric clip (DAPO's clip-higher), or None.
      dual_clip: c > 1 for dual-clip PPO, or None.
      kl_estimator: k1, k2 or k3 for the per-token KL, in the reward or in the loss.
    """
    _clip(clip_eps, clip_eps_high, dual_clip)
    _kl_estimator(kl_estimator)

    def loss(model, batch, frozen, rng, total):
        logps = token_logps(model, batch)
        value, metrics = losses.ppo_policy_loss(
            logps, batch["old_logps"], batch["advantages"], batch["loss_mask"],
            clip_eps=clip_eps, clip_eps_high=clip_eps_high, dual_clip=dual_clip,
            normalizer=total)
        return _with_kl(value, metrics, logps, batch, kl_estimator, sequence_mean=False,
                        normalizer=total)

    return Objective(loss=loss, count=_trained_tokens, inputs="rollout")


GRPO_AGGREGATIONS = ("sequence", "token", "unnormalized")


def grpo(*, clip_eps: float = 0.2, clip_eps_high: float | None = None,
         aggregation: str = "sequence", importance: str = "token",
         kl_estimator: str = "k3") -> Objective:
    """GRPO: the clipped surrogate on group-relative advantages broadcast to the tokens.

    Shao et al. (2024), "DeepSeekMath", Eq. 3. Aggregations: "sequence" (the mean over sequences
    of each sequence's token mean, original GRPO), "token" (the token mean over the batch, DAPO:
    Yu et al., 2025, Eq. 8) or "unnormalized" (the token sum over B * max_new_tokens, Dr. GRPO:
    Liu et al., 2025, "Understanding R1-Zero-Like Training", Sec. 3.2). `importance="sequence"`
    is GSPO (Zheng et al., 2025, Eq. 7): one ratio per sequence, exp of the mean token
    log-ratio, clipped per sequence (its gradient, as GSPO-token's, is the sequence ratio times
    the mean token score); it needs the "sequence" aggregation.

    Args:
      clip_eps: eps (GSPO uses about 3e-4 on the sequence ratio).
      clip_eps_high: eps_high of an asymmetric clip, or None.
      aggregation: "sequence", "token" or "unnormalized".
      importance: "token" (per-token ratio) or "sequence" (GSPO).
      kl_estimator: k1, k2 or k3 (GRPO: k3 in the loss).
    """
    _clip(clip_eps, clip_eps_high)
    _kl_estimator(kl_estimator)
    _check("aggregation", aggregation, aggregation in GRPO_AGGREGATIONS,
           ", ".join(GRPO_AGGREGATIONS))
    _check("importance", importance, importance in ("token", "sequence"), "token or sequence")
    if importance == "sequence" and aggregation != "sequence":
        raise ValueError(f"config.loss.importance='sequence' (GSPO) needs "
                         f"config.loss.aggregation='sequence', got {aggregation!r}")
    sequence_mean = aggregation == "sequence"

    def count(batch):
        if aggregation == "sequence":
            return _rows(batch)
        if aggregation == "token":
            return _trained_tokens(batch)
        return _rows(batch) * batch["max_tokens"][0].astype(jnp.float32)

    def loss(model, batch, frozen, rng, total):
        mask = batch["loss_mask"]
        logps = token_logps(model, batch)
        ratio_logps = logps
        if importance == "sequence":
            # log s_i = mean_t (log pi - log pi_old), the same on every token of the sequence;
            # logps - sg(logps) carries the gradient of each token with value 0 (GSPO-token).
            seq_log_ratio = jax.lax.stop_gradient(
                masked_sum(logps - batch["old_logps"], mask, axis=-1)
                / jnp.maximum(masked_count(mask, axis=-1), 1.0))
            ratio_logps = (batch["old_logps"] + seq_log_ratio[:, None]
                           + logps - jax.lax.stop_gradient(logps))
        value, metrics = losses.ppo_policy_loss(
            ratio_logps, batch["old_logps"], batch["advantages"], mask, clip_eps=clip_eps,
            clip_eps_high=clip_eps_high, sequence_mean=sequence_mean, normalizer=total)
        return _with_kl(value, metrics, logps, batch, kl_estimator,
                        sequence_mean=sequence_mean, normalizer=total)

    return Objective(loss=loss, count=count, inputs="rollout")


def _reinforce(kl_estimator: str) -> Objective:
    _kl_estimator(kl_estimator)

    def loss(model, batch, frozen, rng, total):
        logps = token_logps(model, batch)
        value, metrics = losses.reinforce_loss(logps, batch["loss_mask"], batch["returns"],
                                               batch["baseline"], normalizer=total)
        return _with_kl(value, metrics, logps, batch, kl_estimator, sequence_mean=True,
                        normalizer=total)

    return Objective(loss=loss, count=_rows, inputs="rollout")


def reinforce(*, kl_estimator: str = "k1") -> Objective:
    """REINFORCE with a baseline (`losses.reinforce_loss`): -(R - b) * log pi(y), sequence mean.

    The rollout gives R (score, minus the summed KL when it is placed in the reward) and b (the
    loop's running mean of past returns).

    Args:
      kl_estimator: k1, k2 or k3, in the reward or in the loss.
    """
    return _reinforce(kl_estimator)


def rloo(*, kl_estimator: str = "k1") -> Objective:
    """RLOO: REINFORCE whose baseline is the mean return of the other samples of the prompt.

    Ahmadian et al. (2024), "Back to Basics", Sec. 3.3; the rollout gives R and the
    leave-one-out baseline b (R - b = `losses.rloo_advantages`).

    Args:
      kl_estimator: k1, k2 or k3, in the reward (Ahmadian et al.) or in the loss.
    """
    return _reinforce(kl_estimator)


def value(*, clip_eps: float | None = 0.2) -> Objective:
    """The critic's clipped value loss (`losses.value_loss`) on values aligned to the tokens.

    A scalar-head model; its output at position t - 1 is V of the state before token t
    (`logprobs.values_before_tokens`), regressed on the GAE returns of the rollout.

    Args:
      clip_eps: eps_v of the value clip, or None for the plain squared error.
    """
    if clip_eps is not None:
        _number("clip_eps", clip_eps, 0.0, open_low=True)

    def loss(model, batch, frozen, rng, total):
        values = values_before_tokens(model(batch["input_ids"], batch["attention_mask"]))
        return losses.value_loss(values, batch["old_values"], batch["value_targets"],
                                 batch["loss_mask"], clip_eps=clip_eps, normalizer=total)

    return Objective(loss=loss, count=_trained_tokens, inputs="rollout", head="scalar")


RL_OBJECTIVES = ("ppo", "grpo", "rloo", "reinforce", "value")

OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "sft": sft,
    "aligner": aligner,
    "rm": rm,
    "dpo": dpo,
    "robust_dpo": robust_dpo,
    "ipo": ipo,
    "hinge": hinge,
    "simpo": simpo,
    "orpo": orpo,
    "kto": kto,
    "ppo": ppo,
    "grpo": grpo,
    "rloo": rloo,
    "reinforce": reinforce,
    "value": value,
}


def _factory(name: str) -> Callable[..., Objective]:
    """`OBJECTIVES[name]`, or for "package.module:function" that function (an objective defined
    outside the package, e.g. in the config file that uses it)."""
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"config.objective={name!r}: cannot import {attr!r} from "
                             f"{module!r} ({e})") from e
        if not callable(factory):
            raise ValueError(f"config.objective={name!r}: {attr!r} is not a factory")
        return factory
    if name not in OBJECTIVES:
        raise ValueError(f"config.objective={name!r}: expected one of {', '.join(OBJECTIVES)}, "
                         "or 'package.module:factory'")
    return OBJECTIVES[name]


def loss_defaults(name: str) -> dict[str, Any]:
    """The `config.loss` keys of objective `name` with their defaults (its factory's keywords)."""
    return {p.name: p.default for p in inspect.signature(_factory(name)).parameters.values()}


def make(name: str, loss_config: Mapping[str, Any]) -> Objective:
    """The objective `config.objective` with the keywords `config.loss`.

    Args:
      name: a key of `OBJECTIVES`, or "package.module:factory".
      loss_config: keywords of its factory (a subset of `loss_defaults(name)`).

    Raises:
      ValueError: an unknown objective (naming `config.objective`), or an unknown keyword or a
        bad value (naming `config.loss.<key>`).
    """
    accepted = loss_defaults(name)
    unknown = sorted(set(loss_config) - set(accepted))
    if unknown:
        takes = f"only {', '.join(accepted)}" if accepted else "no keywords"
        raise ValueError(f"config.loss.{unknown[0]}: objective {name!r} takes {takes} "
                         f"(config.loss declares the keys of the objective a config is built "
                         f"for: pick another with the config's argument, e.g. configs/dpo.py:ipo)")
    return _factory(name)(**dict(loss_config))
