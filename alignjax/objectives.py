"""Objectives: thin glue from a model and a batch to a loss (forward -> log-probs -> loss).

Batch fields (numpy or jax arrays, leading axis B):
  SFT / Aligner: input_ids, attention_mask, loss_mask (1 on the trained tokens), and optionally
    segment_ids, positions (packed examples).
  Pairs: chosen_input_ids, chosen_attention_mask, chosen_loss_mask and the same for rejected;
    optionally ref_chosen_logps, ref_rejected_logps (cached reference log-probs, [B]).

Frozen inputs: None, or a `Frozen(graphdef, params)` reference model for the DPO family when
its log-probs are not cached.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from alignjax import losses
from alignjax.logprobs import (
    concat_pair,
    masked_count,
    sequence_logprobs,
    split_pair,
    target_mask,
    token_logprobs_from_hidden,
)
from alignjax.models import last_token_values
from alignjax.steps import Objective

LOGPROB_CHUNK = 128  # sequence positions per chunk of vocabulary logits


class Frozen(NamedTuple):
    """A model that does not train (the DPO reference), as a pytree of arrays."""

    graphdef: Any
    params: Any

    def model(self):
        return nnx.merge(self.graphdef, jax.lax.stop_gradient(self.params))


def token_logps(model, batch: dict, prefix: str = "") -> jax.Array:
    """Shifted per-token log-probs [B, L] without materialising B x L x V logits."""
    ids = batch[prefix + "input_ids"]
    h_BLD = model.hidden(ids, batch[prefix + "attention_mask"],
                         positions_BL=batch.get(prefix + "positions"),
                         segment_ids_BL=batch.get(prefix + "segment_ids"))
    return token_logprobs_from_hidden(h_BLD, model.output_embedding(), ids,
                                      chunk_size=LOGPROB_CHUNK)


def _trained_tokens(batch: dict) -> jax.Array:
    return masked_count(target_mask(batch["loss_mask"]))


def _sft(model, batch, frozen, rng, total):
    return losses.sft_loss(token_logps(model, batch), batch["loss_mask"], normalizer=total)


def _pairs(batch: dict) -> dict:
    keys = ("input_ids", "attention_mask", "loss_mask")
    return concat_pair({k: batch["chosen_" + k] for k in keys},
                       {k: batch["rejected_" + k] for k in keys})


def pair_logps(model, batch: dict, *, average: bool = False):
    """Summed (or averaged) completion log-probs of chosen and rejected, one forward pass."""
    both = _pairs(batch)
    seq_B2 = sequence_logprobs(token_logps(model, both), both["loss_mask"], average=average)
    return split_pair(seq_B2)


def reference_logps(batch: dict, frozen: Frozen | None):
    if "ref_chosen_logps" in batch:
        return batch["ref_chosen_logps"], batch["ref_rejected_logps"]
    if frozen is None:
        raise ValueError("the DPO family needs a reference model or cached reference log-probs "
                         "(config.ref_cache)")
    return pair_logps(frozen.model(), batch)


def _reference_fields(model, batch: dict) -> dict:
    chosen, rejected = pair_logps(model, batch)
    return {"ref_chosen_logps": chosen, "ref_rejected_logps": rejected}


def _num_pairs(batch: dict) -> jax.Array:
    return jnp.asarray(batch["chosen_input_ids"].shape[0], jnp.float32)


def _scale(result, batch, total):
    """Pair losses are batch means; weight a micro-batch by its share of the whole batch."""
    loss, metrics = result
    return loss * _num_pairs(batch) / total, metrics


def _preference(model, batch, frozen, rng, total, *, loss: str, **kwargs):
    if loss in ("simpo", "orpo"):
        chosen, rejected = pair_logps(model, batch, average=True)
        if loss == "simpo":
            return _scale(losses.simpo_loss(chosen, rejected, **kwargs), batch, total)
        nll = -chosen  # ORPO's SFT term: mean NLL of the chosen completion
        return _scale(losses.orpo_loss(chosen, rejected, jnp.mean(nll), **kwargs), batch, total)
    chosen, rejected = pair_logps(model, batch)
    ref_chosen, ref_rejected = reference_logps(batch, frozen)
    fn = {"dpo": losses.dpo_loss, "robust_dpo": losses.robust_dpo_loss, "ipo": losses.ipo_loss,
          "hinge": losses.hinge_loss}[loss]
    result = fn(chosen, rejected, jax.lax.stop_gradient(ref_chosen),
                jax.lax.stop_gradient(ref_rejected), **kwargs)
    # KL(policy || reference) estimate on the chosen completions, per sequence (k1).
    metrics = {**result[1], "dpo/kl_chosen": jnp.mean(chosen - ref_chosen)}
    return _scale((result[0], metrics), batch, total)


def _reward_model(model, batch, frozen, rng, total, **kwargs):
    both = _pairs(batch)
    values_BL = model(both["input_ids"], both["attention_mask"])
    chosen, rejected = split_pair(last_token_values(values_BL, both["attention_mask"]))
    return _scale(losses.bradley_terry_loss(chosen, rejected, **kwargs), batch, total)


PREFERENCE_LOSSES = ("dpo", "robust_dpo", "ipo", "hinge", "simpo", "orpo")


def get(name: str, **kwargs: Any) -> Objective:
    """The objective called `name`: sft, aligner, rm, or a preference loss of the DPO family.

    Args:
      name: "sft", "aligner" (correction SFT: the loss mask covers the correction and its EOS),
        "rm" (Bradley-Terry on a ScalarHeadModel), or one of PREFERENCE_LOSSES.
      **kwargs: keywords of the loss function (beta, label_smoothing, gamma, margin, ...).
    """
    if name == "sft":
        return Objective(loss=_sft, count=_trained_tokens, inputs="sft")
    if name == "aligner":
        return Objective(loss=_sft, count=_trained_tokens, inputs="correction")
    if name == "rm":
        return Objective(loss=partial(_reward_model, **kwargs), count=_num_pairs, inputs="pair",
                         head="scalar")
    if name in ("simpo", "orpo"):
        return Objective(loss=partial(_preference, loss=name, **kwargs), count=_num_pairs,
                         inputs="pair")
    if name in PREFERENCE_LOSSES:
        return Objective(loss=partial(_preference, loss=name, **kwargs), count=_num_pairs,
                         inputs="pair", reference=_reference_fields)
    raise ValueError(f"config.objective={name!r}: expected sft, aligner, rm or one of "
                     f"{PREFERENCE_LOSSES}")
