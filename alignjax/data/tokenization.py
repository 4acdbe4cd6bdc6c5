"""Parsed examples -> token ids and trained-token masks, with truncation (counted).

The output is a `TokenizedData`: the examples' kind, one dict of 1-D numpy arrays per kept
example, the pad id and the counts. Per kind (n = tokens of the example):

  sft, correction, unpaired  input_ids [n] int32, loss_mask [n] uint8, example_id
                             + correction_start (correction: index of the first correction
                               token) / label (unpaired: bool)
                             + kl_input_ids, kl_loss_mask (unpaired with a `kl_completion`:
                               the example's kept prompt tokens followed by the mismatched
                               completion and EOS, cut to fit `max_length`; not counted as
                               truncation, and never the reason an example is dropped)
  pair                       chosen_input_ids, chosen_loss_mask, rejected_input_ids,
                             rejected_loss_mask, example_id (the two share the prompt tokens)
  prompt                     input_ids [n] int32, example_id

`example_id` is the index of the example in the list given to `tokenize`, so a batch row can
be traced back to its parsed example (and `origin`, the file and line) after drops and
shuffling. `loss_mask` is 1 on the tokens to predict (assistant contents + EOS), aligned with
`input_ids`; its first entry is always 0 (nothing predicts the first token).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from alignjax.data import records as R
from alignjax.data.chat import ALIGNER_INSTRUCTION, ChatRenderer, Piece, correction_prompt
from alignjax.data.records import TEMPLATES, Example
from alignjax.data.truncation import check_policy, kept_lengths

_ENCODE_CHUNK = 1024


@dataclasses.dataclass
class TokenizedData:
    """Tokenized examples of one kind, ready for `alignjax.data.pipeline.batch_iterator`.

    Attributes:
      kind: "sft", "pair", "unpaired", "correction", "prompt" or "packed".
      examples: one dict of numpy arrays (and int ids) per example.
      pad_id: the id written into padding.
      counts: data-quality counts (parsing counts if given to `tokenize`, plus truncation).
    """

    kind: str
    examples: list[dict[str, Any]]
    pad_id: int
    counts: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    def __len__(self) -> int:
        return len(self.examples)


def _layout(
    example: Example, renderer: ChatRenderer, aligner_instruction: str, template: str
) -> tuple[list[Piece], list[str]]:
    """(untrained-or-earlier pieces, final alternative responses) of one example."""
    if isinstance(example, R.SFTExample):
        pieces = renderer.conversation(example.messages)
        return pieces[:-1], [pieces[-1].text]
    if isinstance(example, R.PairExample):
        return [Piece(renderer.prompt(example.prompt), False)], [example.chosen, example.rejected]
    if isinstance(example, R.UnpairedExample):
        kl = [] if example.kl_completion is None else [example.kl_completion]
        return [Piece(renderer.prompt(example.prompt), False)], [example.completion, *kl]
    if isinstance(example, R.CorrectionExample):
        prompt = correction_prompt(renderer.tokenizer, example.question, example.answer,
                                   template=template, instruction=aligner_instruction,
                                   chat_template=renderer.chat_template)
        return [Piece(prompt, False)], [example.correction]
    if isinstance(example, R.PromptExample):
        return [Piece(renderer.prompt(example.prompt), False)], []
    raise TypeError(f"not an example: {type(example).__name__}")


def _encode_all(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without added special tokens (batched for speed)."""
    ids: list[list[int]] = []
    for start in range(0, len(texts), _ENCODE_CHUNK):
        chunk = texts[start : start + _ENCODE_CHUNK]
        ids.extend(
            tokenizer(chunk, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        )
    return ids


def _prefix(
    pieces: list[Piece], piece_ids: list[list[int]], eos: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ids and loss mask of the pieces before the final response (earlier assistant turns train,
    each followed by a trained EOS)."""
    ids: list[int] = []
    mask: list[int] = []
    for piece, tokens in zip(pieces, piece_ids):
        tokens = tokens + [eos] if piece.trained else tokens
        ids += tokens
        mask += [int(piece.trained)] * len(tokens)
    return np.asarray(ids, np.int32), np.asarray(mask, np.uint8)


def tokenize(
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    truncation: str = "keep_end",
    max_prompt_length: int | None = None,
    chat_template: str | None = None,
    aligner_instruction: str = ALIGNER_INSTRUCTION,
    template: str = "chat",
    counts: collections.Counter[str] | None = None,
) -> TokenizedData:
    """Tokenizes examples of one kind through the chat template and applies truncation.

    Args:
      examples: parsed examples (`alignjax.data.formats.parse_rows`), all of one kind.
      tokenizer: e.g. from `alignjax.models.load_tokenizer`.
      max_length: M, the most tokens of a sequence (prompt + response; for prompts, the prompt).
      truncation: "keep_end", "cut_response" or "drop" (see `alignjax.data.truncation`).
      max_prompt_length: the prompt tokens "keep_end" keeps at least; default M // 2.
      chat_template: a Jinja template overriding the tokenizer's.
      aligner_instruction: the correction prompt's user turn, with `{question}` and `{answer}`
        fields (template "chat").
      template: the correction prompt (`alignjax.data.chat.correction_prompt`): "chat" (the
        instruction through the chat template) or "aligner" (the authors' training prompt,
        byte for byte, then the correction and EOS; no chat template).
      counts: parsing counts to carry along (copied, then truncation counts are added).

    Returns:
      The kept examples with counts `truncated_prompt`, `truncated_response`,
      `dropped_too_long` and `tokenized`.
    """
    check_policy(truncation, max_length, max_prompt_length)
    if template not in TEMPLATES:
        raise ValueError(f"template={template!r}: expected one of {TEMPLATES}")
    kind = R.kind_of(examples)
    if kind == "unpaired" and len({ex.kl_completion is None for ex in examples}) > 1:
        raise ValueError("unpaired examples: either all or none carry a kl_completion "
                         "(alignjax.data.as_unpaired)")
    renderer = ChatRenderer(tokenizer, chat_template)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; the trained span needs one")
    layouts = []
    for ex in examples:
        try:
            layouts.append(_layout(ex, renderer, aligner_instruction, template))
        except ValueError as e:
            raise ValueError(f"{ex.origin}: {e}") from None
    texts = [p.text for pieces, _ in layouts for p in pieces] + [
        r for _, resps in layouts for r in resps
    ]
    encoded = iter(_encode_all(tokenizer, texts))
    prefixes = [[next(encoded) for _ in pieces] for pieces, _ in layouts]
    responses = [[next(encoded) for _ in resps] for _, resps in layouts]

    counts = collections.Counter(counts or {})
    out = []
    for i, ((pieces, _), piece_ids, resp_ids) in enumerate(zip(layouts, prefixes, responses)):
        prompt, prompt_mask = _prefix(pieces, piece_ids, eos)
        if len(prompt) == 0:
            raise ValueError(f"{examples[i].origin}: the chat template rendered an empty prompt")
        resps = [np.asarray(ids + [eos], np.int32) for ids in resp_ids]
        # KTO's mismatched completion follows the kept prompt; it never shapes the example.
        resps, kl_resps = (resps[:1], resps[1:]) if kind == "unpaired" else (resps, [])
        kept = kept_lengths(
            len(prompt),
            [len(r) for r in resps],
            max_length=max_length,
            policy=truncation,
            max_prompt_length=max_prompt_length,
        )
        if kept is None:
            counts[R.DROPPED_TOO_LONG] += 1
            continue
        counts[R.TRUNCATED_PROMPT] += int(kept.prompt < len(prompt))
        counts[R.TRUNCATED_RESPONSE] += int(any(k < len(r) for k, r in zip(kept.responses, resps)))
        prompt, prompt_mask = prompt[-kept.prompt :], prompt_mask[-kept.prompt :]
        prompt_mask[0] = 0  # nothing predicts the first token (matters after "keep_end")
        seqs = [
            (np.concatenate([prompt, r[:k]]), np.concatenate([prompt_mask, np.ones(k, np.uint8)]))
            for r, k in zip(resps, kept.responses)
        ]
        for r in kl_resps:
            r = r[: max_length - len(prompt)]
            mask = np.concatenate([prompt_mask, np.ones_like(r, np.uint8)])
            seqs.append((np.concatenate([prompt, r]), mask))
        out.append(_example(kind, examples[i], i, prompt, seqs))
    counts[R.TOKENIZED] += len(out)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return TokenizedData(kind, out, int(pad), counts)


def _example(
    kind: str,
    example: Example,
    index: int,
    prompt: np.ndarray,
    seqs: list[tuple[np.ndarray, np.ndarray]],
) -> dict[str, Any]:
    """The stored fields of one tokenized example (see the module docstring)."""
    if kind == "prompt":
        return {"input_ids": prompt, "example_id": index}
    if kind == "pair":
        (c_ids, c_mask), (r_ids, r_mask) = seqs
        return {
            "chosen_input_ids": c_ids,
            "chosen_loss_mask": c_mask,
            "rejected_input_ids": r_ids,
            "rejected_loss_mask": r_mask,
            "example_id": index,
        }
    (ids, mask), *kl = seqs
    row = {"input_ids": ids, "loss_mask": mask, "example_id": index}
    if kind == "correction":
        row["correction_start"] = len(prompt)
    if kind == "unpaired":
        row["label"] = example.label
        if kl:
            ((row["kl_input_ids"], row["kl_loss_mask"]),) = kl
    return row
