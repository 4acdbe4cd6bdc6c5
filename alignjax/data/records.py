"""Parsed examples (text, before tokenization), the malformed-row error and the counters.

Every record format of `alignjax.data.formats` parses a raw row into one of five example types:

  SFTExample          chat `messages`; every assistant turn is trained
  PairExample         shared prompt + chosen / rejected final responses (RM, DPO family)
  UnpairedExample     prompt + completion + desirable/undesirable label (KTO), optionally a
                      mismatched completion for the KL reference point (`as_unpaired`)
  CorrectionExample   question + original answer + correction (Aligner)
  PromptExample       prompt only (RL rollouts, generation, evaluation)

A prompt is always a tuple of chat messages `{"role": ..., "content": ...}` ending with a
non-assistant turn; the tokenizer's chat template renders it (`alignjax.data.chat`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

Message = Mapping[str, str]
Messages = tuple[Message, ...]

# Counter names (fixed, like metric names). Reading and parsing:
ROWS = "rows"  # raw rows read from the source (and unreadable lines of JSON Lines files)
MALFORMED_SKIPPED = "malformed_skipped"  # rows skipped with on_malformed="skip"
IDENTICAL_PAIRS = "identical_pairs_dropped"  # chosen == rejected
NO_PREFERENCE = "no_preference_dropped"  # judge gave no winner (AlpacaEval preference 0)
HH_COMMON_PREFIX = "hh_prompt_from_common_prefix"  # transcripts disagree before their last turn
EMPTY_KEPT = "empty_response_kept"  # a response empty or only spaces, kept (on_empty="keep")
EMPTY_DROPPED = "empty_response_dropped"  # such rows dropped (on_empty="drop")
EXAMPLES = "examples"  # examples kept after parsing
# Tokenization and truncation (alignjax.data.tokenization):
TRUNCATED_PROMPT = "truncated_prompt"
TRUNCATED_RESPONSE = "truncated_response"
DROPPED_TOO_LONG = "dropped_too_long"
TOKENIZED = "tokenized"  # examples kept after truncation
PACKED_ROWS = "packed_rows"  # rows made by alignjax.data.packing


class MalformedRowError(ValueError):
    """A raw row lacks a field, has one of the wrong type or an empty one, or is unreadable.

    The message names the file, the line (or row) and the field, e.g.
    `data/train.jsonl:17: field 'chosen': missing (row has 'prompt', 'rejected')`, or
    `data/train.jsonl:18: invalid JSON: ...` for a line that is no row at all (field None).
    """

    def __init__(self, location: str, field: str | None, problem: str):
        where = f"{location}: field '{field}'" if field is not None else location
        super().__init__(f"{where}: {problem}")
        self.location = location
        self.field = field


@dataclasses.dataclass(frozen=True)
class UnreadableRow:
    """A line of a data file that is no row (not UTF-8, not JSON): what is wrong with it."""

    problem: str


@dataclasses.dataclass(frozen=True)
class SFTExample:
    """A conversation to imitate; every assistant turn (+ EOS) is trained.

    Attributes:
      messages: the conversation, ending with an assistant turn.
      origin: where the row came from, e.g. `file.jsonl:12`.
    """

    messages: Messages
    origin: str = ""


@dataclasses.dataclass(frozen=True)
class PairExample:
    """A preference pair: one prompt, two final responses, the first preferred."""

    prompt: Messages
    chosen: str
    rejected: str
    origin: str = ""


@dataclasses.dataclass(frozen=True)
class UnpairedExample:
    """A single completion labelled desirable (True) or undesirable (False), for KTO.

    Attributes:
      prompt: the chat prompt.
      completion: the final response.
      label: True for a desirable completion.
      origin: where the row came from.
      kl_completion: the completion of an example with another prompt, whose log-prob under
        this prompt estimates KTO's KL reference point (`as_unpaired`); None: no KL sequence.
    """

    prompt: Messages
    completion: str
    label: bool
    origin: str = ""
    kl_completion: str | None = None


@dataclasses.dataclass(frozen=True)
class CorrectionExample:
    """An Aligner triplet: the correction of `answer` to `question` is trained."""

    question: str
    answer: str
    correction: str
    origin: str = ""


# How a correction example's prompt is written (`alignjax.data.chat.correction_prompt`).
TEMPLATES = ("aligner", "chat")


@dataclasses.dataclass(frozen=True)
class PromptExample:
    """A prompt without a response."""

    prompt: Messages
    origin: str = ""


Example = SFTExample | PairExample | UnpairedExample | CorrectionExample | PromptExample

# The kind of each example type; batches are collated by kind (`alignjax.data.collate`).
KINDS: dict[type, str] = {
    SFTExample: "sft",
    PairExample: "pair",
    UnpairedExample: "unpaired",
    CorrectionExample: "correction",
    PromptExample: "prompt",
}


def kind_of(examples: Sequence[Example]) -> str:
    """The kind shared by all `examples` ("sft", "pair", "unpaired", "correction", "prompt")."""
    kinds = {KINDS[type(ex)] for ex in examples}
    if len(kinds) != 1:
        raise ValueError(f"expected examples of one kind, got {sorted(kinds) or 'none'}")
    return kinds.pop()


def user_prompt(text: str) -> Messages:
    """A single-turn prompt."""
    return ({"role": "user", "content": text},)


def unpair(pairs: Iterable[PairExample]) -> list[UnpairedExample]:
    """Splits preference pairs into KTO examples: chosen -> desirable, rejected -> undesirable."""
    out = []
    for pair in pairs:
        out.append(UnpairedExample(pair.prompt, pair.chosen, True, pair.origin))
        out.append(UnpairedExample(pair.prompt, pair.rejected, False, pair.origin))
    return out


def as_sft(examples: Iterable[Example]) -> list[Example]:
    """SFT on the chosen responses of preference pairs; other examples are kept as they are."""
    return [SFTExample(messages=(*e.prompt, {"role": "assistant", "content": e.chosen}),
                       origin=e.origin)
            if isinstance(e, PairExample) else e for e in examples]
def as_unpaired(examples: Sequence[Example]) -> list[UnpairedExample]:
    """KTO examples, each with a mismatched completion for the KL reference point.

    Preference pairs are split by `unpair` (chosen -> desirable, rejected -> undesirable);
    unpaired examples are kept. Example i then takes as `kl_completion` the completion of
    example (i + s) mod N, with s >= 1 the smallest shift that gives every example another
    prompt's completion (2 for pairs, whose two halves share a prompt). As in TRL's KTOTrainer
    (which rotates completions by one within each batch), the mismatched completions are the
    matched ones permuted; the pairing is fixed by the order of `examples`, so reference
    log-probs can be cached per example.

    Args:
      examples: PairExample or UnpairedExample records (not mixed).

    Raises:
      TypeError: another kind of example (the data format does not give preferences).
      ValueError: mixed kinds, or no shift pairs every example with another prompt.
    """
    kinds = {KINDS.get(type(ex)) for ex in examples}
    if not kinds <= {"pair", "unpaired"}:
        other = next(ex for ex in examples if KINDS.get(type(ex)) not in ("pair", "unpaired"))
        raise TypeError(f"{other.origin}: KTO needs preference pairs or unpaired examples "
                        f"(config.data.format), got a {type(other).__name__}")
    if len(kinds) > 1:
        raise ValueError("as_unpaired: examples mix preference pairs and unpaired examples")
    unpaired = unpair(examples) if kinds == {"pair"} else list(examples)
    index: dict[tuple, int] = {}
    prompt_ids = np.array([index.setdefault(tuple(tuple(sorted(m.items())) for m in ex.prompt),
                                            len(index)) for ex in unpaired])
    n = len(unpaired)
    shift = next((s for s in range(1, n) if np.all(prompt_ids != np.roll(prompt_ids, -s))), None)
    if shift is None:
        raise ValueError(f"as_unpaired: no cyclic shift gives each of the {n} examples the "
                         f"completion of another prompt (KTO's KL estimate needs one); does one "
                         f"prompt hold more than half of them?")
    return [dataclasses.replace(ex, kl_completion=unpaired[(i + shift) % n].completion)
            for i, ex in enumerate(unpaired)]


def prompts_of(examples: Iterable[Example]) -> list[PromptExample]:
    """The prompts of any examples (e.g. HH-RLHF pairs as PPO prompts)."""
    out = []
    for ex in examples:
        if isinstance(ex, (PairExample, UnpairedExample, PromptExample)):
            out.append(PromptExample(ex.prompt, ex.origin))
        elif isinstance(ex, SFTExample):
            last_user = max(i for i, m in enumerate(ex.messages) if m["role"] != "assistant")
            out.append(PromptExample(ex.messages[: last_user + 1], ex.origin))
        else:
            raise TypeError(f"{ex.origin}: {type(ex).__name__} has no chat prompt")
    return out
