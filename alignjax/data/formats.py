"""Record formats: raw rows (dicts) -> parsed examples, with data-quality counts.

A format is a parse function plus a default field-name map (canonical name -> key in the raw
row), picked by name from `FORMATS`. Any format can read differently named columns by passing
`fields=` (merged over the default map), e.g. `fields={"preferred_id": "safer_response_id"}`
trains PKU-SafeRLHF on harmlessness instead of helpfulness.

| format                  | canonical fields                                  | example type      |
|-------------------------|---------------------------------------------------|-------------------|
| sft                     | prompt + response, or messages                    | SFTExample        |
| alpaca_eval             | prompt=instruction, response=output               | SFTExample        |
| preference              | prompt?, chosen, rejected (strings or messages)   | PairExample       |
| hh_rlhf                 | chosen, rejected (HH transcripts)                 | PairExample       |
| pku_saferlhf            | prompt, response_0, response_1, preferred_id      | PairExample       |
| alpaca_eval_annotations | prompt=instruction, output_1, output_2, preference| PairExample       |
| unpaired                | prompt, completion, label                         | UnpairedExample   |
| aligner                 | question, answer, correction (PKU Aligner)        | CorrectionExample |
| alpaca_eval_aligner     | question=instruction, answer=original_output,     | CorrectionExample |
|                         | correction=output                                 |                   |
| prompt                  | prompt (string or messages)                       | PromptExample     |

A prompt field may be a string (one user turn) or a list of `{"role", "content"}` messages.
Pairs whose two responses are equal are dropped and counted (`identical_pairs_dropped`).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from alignjax.data import hh_rlhf
from alignjax.data import records as R
from alignjax.data.records import Example, MalformedRowError, Messages


class _EmptyResponse(Exception):
    """A row dropped for an empty response (on_empty="drop")."""


class Fields:
    """A raw row read through a field-name map; errors name the location and the field."""

    def __init__(self, row: Any, location: str, names: Mapping[str, str], on_empty: str = "keep"):
        self.on_empty, self.empty = on_empty, False
        if isinstance(row, R.UnreadableRow):
            raise MalformedRowError(location, None, row.problem)
        if not isinstance(row, Mapping):
            raise MalformedRowError(
                location, "<row>", f"expected an object, got {type(row).__name__}"
            )
        self.row, self.location, self.names = row, location, names

    def has(self, field: str) -> bool:
        return self.row.get(self.names.get(field, field)) is not None

    def get(self, field: str, types: type | tuple[type, ...] = str) -> Any:
        """The value of canonical `field`, checked against `types`."""
        key = self.names.get(field, field)
        value = self.row.get(key)
        if value is None:
            raise MalformedRowError(self.location, key, f"missing (row has {sorted(self.row)})")
        if not isinstance(value, types):
            names = (
                types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
            )
            raise MalformedRowError(
                self.location, key, f"expected {names}, got {type(value).__name__}"
            )
        return value

    def text(self, field: str) -> str:
        """A response-like string field; an empty one (or only spaces) is kept, dropped or
        raised as `on_empty` says (`parse_rows` counts it)."""
        return self.check_empty(field, self.get(field))

    def check_empty(self, field: str, value: str) -> str:
        if not value.strip():
            self.empty = True
            if self.on_empty == "raise":
                raise self.error(field, f"empty ({value!r}): nothing to train on "
                                        "(on_empty='raise')")
            if self.on_empty == "drop":
                raise _EmptyResponse
        return value

    def error(self, field: str, problem: str) -> MalformedRowError:
        return MalformedRowError(self.location, self.names.get(field, field), problem)

    def messages(self, field: str) -> Messages:
        """A prompt-like field: a string (one user turn) or a list of role/content messages."""
        value = self.get(field, (str, list))
        if isinstance(value, str):
            return R.user_prompt(value)
        out = []
        for i, m in enumerate(value):
            if not (
                isinstance(m, Mapping)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)
            ):
                raise self.error(field, f"message {i} is not a {{'role': str, 'content': str}}")
            out.append({"role": m["role"], "content": m["content"]})
        if not out:
            raise self.error(field, "empty message list")
        return tuple(out)

    def prompt(self, field: str) -> Messages:
        """Like `messages`, and the prompt must end with a non-assistant turn."""
        msgs = self.messages(field)
        if msgs[-1]["role"] == "assistant":
            raise self.error(field, "a prompt must not end with an assistant turn")
        return msgs


def _pair(
    f: Fields, counts: collections.Counter[str], prompt: Messages, chosen: str, rejected: str
) -> R.PairExample | None:
    if chosen == rejected:
        counts[R.IDENTICAL_PAIRS] += 1
        return None
    return R.PairExample(prompt, chosen, rejected, f.location)


def parse_sft(f: Fields, counts: collections.Counter[str]) -> R.SFTExample:
    """`messages` (ending with an assistant turn), or `prompt` + `response`."""
    if f.has("messages"):
        msgs = f.messages("messages")
        if msgs[-1]["role"] != "assistant":
            raise f.error("messages", "the last message must be an assistant turn")
        if msgs[0]["role"] == "assistant":
            raise f.error("messages", "the first message must not be an assistant turn")
        f.check_empty("messages", msgs[-1]["content"])
        return R.SFTExample(msgs, f.location)
    prompt = f.prompt("prompt")
    response = {"role": "assistant", "content": f.text("response")}
    return R.SFTExample((*prompt, response), f.location)


def _final_assistant(f: Fields, field: str, msgs: Messages) -> str:
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise f.error(field, "expected the prompt followed by exactly one assistant message")
    return f.check_empty(field, msgs[0]["content"])


def parse_preference(f: Fields, counts: collections.Counter[str]) -> R.PairExample | None:
    """`prompt` + `chosen`/`rejected` strings, or chat-message `chosen`/`rejected` lists.

    With message lists the prompt is either given (`chosen` may or may not repeat it) or the
    common prefix of the two conversations; each must then end in one assistant message.
    """
    chosen, rejected = f.get("chosen", (str, list)), f.get("rejected", (str, list))
    if isinstance(chosen, str) and isinstance(rejected, str):
        return _pair(f, counts, f.prompt("prompt"), f.text("chosen"), f.text("rejected"))
    c_msgs, r_msgs = f.messages("chosen"), f.messages("rejected")
    if f.has("prompt"):
        prompt = f.prompt("prompt")
    else:
        n = 0
        while n < min(len(c_msgs), len(r_msgs)) and c_msgs[n] == r_msgs[n]:
            n += 1
        if c_msgs == r_msgs:
            counts[R.IDENTICAL_PAIRS] += 1
            return None
        prompt = c_msgs[:n]
        if not prompt or prompt[-1]["role"] == "assistant":
            raise f.error("prompt", "missing, and chosen/rejected share no prompt turns")
    c_msgs = c_msgs[len(prompt) :] if c_msgs[: len(prompt)] == prompt else c_msgs
    r_msgs = r_msgs[len(prompt) :] if r_msgs[: len(prompt)] == prompt else r_msgs
    return _pair(
        f,
        counts,
        prompt,
        _final_assistant(f, "chosen", c_msgs),
        _final_assistant(f, "rejected", r_msgs),
    )


def parse_hh_rlhf(f: Fields, counts: collections.Counter[str]) -> R.PairExample | None:
    """Anthropic HH-RLHF: two full transcripts (see `alignjax.data.hh_rlhf`)."""
    chosen, rejected = f.get("chosen"), f.get("rejected")
    if chosen == rejected:
        counts[R.IDENTICAL_PAIRS] += 1
        return None
    try:
        prompt, c_resp, r_resp, fallback = hh_rlhf.split_pair(chosen, rejected)
        messages = hh_rlhf.transcript_messages(prompt)
    except ValueError as e:
        raise f.error("chosen", str(e)) from None
    counts[R.HH_COMMON_PREFIX] += int(fallback)
    return _pair(f, counts, messages, c_resp, r_resp)


def parse_pku_saferlhf(f: Fields, counts: collections.Counter[str]) -> R.PairExample | None:
    """PKU-SafeRLHF: `response_0`/`response_1` and the id (0/1) of the preferred one."""
    responses = (f.text("response_0"), f.text("response_1"))
    preferred = f.get("preferred_id", int)
    if preferred not in (0, 1):
        raise f.error("preferred_id", f"expected 0 or 1, got {preferred!r}")
    return _pair(f, counts, f.prompt("prompt"), responses[preferred], responses[1 - preferred])


def parse_judge_annotation(f: Fields, counts: collections.Counter[str]) -> R.PairExample | None:
    """AlpacaEval annotations: `preference` 1 (output_1 wins) or 2; ties are dropped."""
    out1, out2 = f.text("output_1"), f.text("output_2")
    preference = f.get("preference", (int, float))
    if out1 == out2:
        counts[R.IDENTICAL_PAIRS] += 1
        return None
    if preference not in (1, 2):
        counts[R.NO_PREFERENCE] += 1
        return None
    chosen, rejected = (out1, out2) if preference == 1 else (out2, out1)
    return _pair(f, counts, f.prompt("prompt"), chosen, rejected)


def parse_unpaired(f: Fields, counts: collections.Counter[str]) -> R.UnpairedExample:
    """KTO: `prompt`, `completion` and a boolean (or 0/1) desirability `label`."""
    label = f.get("label", (bool, int))
    if label not in (0, 1):
        raise f.error("label", f"expected a boolean, got {label!r}")
    return R.UnpairedExample(f.prompt("prompt"), f.text("completion"), bool(label), f.location)


def parse_correction(f: Fields, counts: collections.Counter[str]) -> R.CorrectionExample:
    """Aligner: `question`, original `answer` and its `correction`."""
    return R.CorrectionExample(f.get("question"), f.get("answer"), f.text("correction"),
                               f.location)


def parse_prompt(f: Fields, counts: collections.Counter[str]) -> R.PromptExample:
    """A prompt alone."""
    return R.PromptExample(f.prompt("prompt"), f.location)


@dataclasses.dataclass(frozen=True)
class Format:
    """A record format: how to parse a row, and where its canonical fields live by default."""

    parse: Callable[[Fields, collections.Counter[str]], Example | None]
    fields: Mapping[str, str] = dataclasses.field(default_factory=dict)


FORMATS: dict[str, Format] = {
    "sft": Format(parse_sft),
    "alpaca_eval": Format(parse_sft, {"prompt": "instruction", "response": "output"}),
    "preference": Format(parse_preference),
    "hh_rlhf": Format(parse_hh_rlhf),
    "pku_saferlhf": Format(parse_pku_saferlhf, {"preferred_id": "better_response_id"}),
    "alpaca_eval_annotations": Format(parse_judge_annotation, {"prompt": "instruction"}),
    "unpaired": Format(parse_unpaired),
    "aligner": Format(parse_correction),
    "alpaca_eval_aligner": Format(
        parse_correction,
        {"question": "instruction", "answer": "original_output", "correction": "output"},
    ),
    "prompt": Format(parse_prompt),
}


def parse_rows(
    rows: Iterable[tuple[str, Any]],
    format: str,
    *,
    fields: Mapping[str, str] | None = None,
    on_malformed: str = "raise",
    counts: collections.Counter[str] | None = None,
    on_empty: str = "keep",
) -> tuple[list[Example], collections.Counter[str]]:
    """Parses `(location, row)` pairs (from `alignjax.data.readers`) into examples.

    Args:
      rows: the raw rows.
      format: a key of `FORMATS`.
      fields: overrides of the format's field-name map (canonical name -> row key).
      on_malformed: "raise" (a `MalformedRowError` naming file, line and field) or "skip"
        (skipped rows are counted under `malformed_skipped`).
      counts: a counter to add to (a new one by default).
      on_empty: a response that is empty or only spaces: "keep" (counted under
        `empty_response_kept`), "drop" (counted under `empty_response_dropped`) or "raise" (a
        `MalformedRowError` naming file, line and field). Prompts are never checked.

    Returns:
      (examples, counts) with the counter names of `alignjax.data.records`.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; expected one of {sorted(FORMATS)}")
    if on_malformed not in ("raise", "skip"):
        raise ValueError(f"on_malformed={on_malformed!r}: expected 'raise' or 'skip'")
    if on_empty not in ("keep", "drop", "raise"):
        raise ValueError(f"on_empty={on_empty!r}: expected 'keep', 'drop' or 'raise'")
    fmt = FORMATS[format]
    names = {**fmt.fields, **(fields or {})}
    counts = collections.Counter() if counts is None else counts
    examples = []
    for location, row in rows:
        counts[R.ROWS] += 1
        try:
            fields = Fields(row, location, names, on_empty)
            example = fmt.parse(fields, counts)
        except MalformedRowError:
            if on_malformed == "raise":
                raise
            counts[R.MALFORMED_SKIPPED] += 1
            continue
        except _EmptyResponse:
            counts[R.EMPTY_DROPPED] += 1
            continue
        if fields.empty:
            counts[R.EMPTY_KEPT] += 1
        if example is not None:
            examples.append(example)
    counts[R.EXAMPLES] += len(examples)
    return examples, counts
