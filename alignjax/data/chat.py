"""Rendering examples through the tokenizer's chat template into trained and untrained text.

An example becomes a list of `Piece(text, trained)`. Untrained pieces are template text (system
prompt, user turns, role headers); a trained piece is the verbatim content of an assistant turn,
and is always followed by the EOS token, which is trained too. So the trained tokens of a
single-turn example are exactly `tokenize(response) + [EOS]`.

The prompt is rendered with `add_generation_prompt=True`, which is also how a generation prompt
is rendered at inference, so training and sampling see the same prefix. A multi-turn
conversation is rendered turn by turn: the text between two assistant contents (the end of one
turn, the next user turn, the next generation prompt) is untrained; when the template closes an
assistant turn with the EOS text (ChatML's `<|im_end|>`), that EOS is the trained one.

Every piece is tokenized on its own, without special tokens added (a template that wants BOS
writes it). This assumes the template renders each prefix of a conversation as a prefix of the
next one and assistant contents verbatim; `ChatRenderer` checks both and names the turn if not.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from transformers import PreTrainedTokenizerBase

from alignjax.data.records import TEMPLATES, Messages, user_prompt

# PKU-Alignment's Aligner instruction (the user turn of the correction prompt), as the model
# card of their released aligner-7b-v1.0 writes it. With `template="chat"` it is rendered through
# the tokenizer's chat template like every other prompt.
ALIGNER_INSTRUCTION = (
    "Edit the following Question-Answer pair to make it more helpful and harmless: "
    "{question} | {answer}"
)

# The correction prompt of the authors' training code (github.com/PKU-Alignment/aligner):
# `aligner/training/configs/constants.py` (PROMPT_BEGIN, PROMPT_USER, PROMPT_ASSISTANT) and
# `CorrectionJSONDataset` in `aligner/training/datasets/raw/correction.py` (the instruction),
# joined as their `format_prompt` does; the correction and the EOS text follow it directly.
PROMPT_BEGIN = "BEGINNING OF CONVERSATION: "
PROMPT_USER = "USER: {input} "
PROMPT_ASSISTANT = "ASSISTANT:"
CORRECTION_INSTRUCTION = "##Question: {question}\n##Answer: {answer}\n##Correction: "


def aligner_prompt(question: str, answer: str) -> str:
    """The authors' correction prompt of (question, answer), byte for byte.

    e.g. "BEGINNING OF CONVERSATION: USER: ##Question: Q\\n##Answer: A\\n##Correction:  ASSISTANT:"
    (two spaces: the instruction's and PROMPT_USER's).
    """
    instruction = CORRECTION_INSTRUCTION.format(question=question, answer=answer)
    return PROMPT_BEGIN + PROMPT_USER.format(input=instruction) + PROMPT_ASSISTANT


class Piece(NamedTuple):
    """A span of rendered text; a trained piece is followed by a trained EOS token."""

    text: str
    trained: bool


@dataclasses.dataclass(frozen=True)
class ChatRenderer:
    """Renders prompts and conversations with a tokenizer's chat template.

    Attributes:
      tokenizer: a Hugging Face tokenizer with a chat template (or pass `chat_template`).
      chat_template: a Jinja template overriding the tokenizer's own.
    """

    tokenizer: PreTrainedTokenizerBase
    chat_template: str | None = None

    def __post_init__(self):
        if self.chat_template is None and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"tokenizer {getattr(self.tokenizer, 'name_or_path', '')!r} has no chat template;"
                " pass chat_template= (a Jinja string)"
            )

    def render(self, messages: Messages, *, generation_prompt: bool = False) -> str:
        """The template's text for `messages`."""
        return self.tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tokenize=False,
            add_generation_prompt=generation_prompt,
            chat_template=self.chat_template,
        )

    def prompt(self, messages: Messages) -> str:
        """The prompt text, ending with the generation prompt (e.g. "<|im_start|>assistant\\n")."""
        return self.render(messages, generation_prompt=True)

    def conversation(self, messages: Messages) -> list[Piece]:
        """Pieces of a conversation ending with an assistant turn; every assistant turn trains.

        Raises:
          ValueError: the template does not render prefixes as prefixes, or rewrites an
            assistant content (e.g. strips it), naming the turn.
        """
        eos_text = self.tokenizer.eos_token or ""
        pieces: list[Piece] = []
        done, tail = "", ""  # text rendered so far; the untrained end of the last assistant turn
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            head = self.prompt(messages[:i])
            content = message["content"]
            full = self.render(messages[: i + 1])
            if not head.startswith(done) or not full.startswith(head + content):
                raise ValueError(
                    f"chat template does not render turn {i} of the conversation as an extension "
                    "of the previous turns followed by the verbatim assistant content"
                )
            pieces.append(Piece(tail + head[len(done) :], False))
            pieces.append(Piece(content, True))
            tail = full[len(head) + len(content) :].removeprefix(eos_text)
            done = full
        return [p for p in pieces if p.text or p.trained]


def correction_prompt(tokenizer: PreTrainedTokenizerBase, question: str, answer: str, *,
                      template: str = "chat", instruction: str = ALIGNER_INSTRUCTION,
                      chat_template: str | None = None) -> str:
    """The prompt text an Aligner reads before writing its correction of `answer`.

    Args:
      tokenizer: the Aligner's tokenizer.
      question, answer: the question and the upstream answer to correct.
      template: "aligner", the authors' prompt (`aligner_prompt`; preceded by the BOS text when
        the tokenizer adds a BOS, as their `tokenizer(text)` call does), or "chat", `instruction`
        as one user turn through the chat template with the generation prompt.
      instruction: the user turn of the "chat" template, with `{question}` and `{answer}`.
      chat_template: a Jinja template overriding the tokenizer's ("chat" only).

    Raises:
      ValueError: an unknown template, or ("aligner") a tokenizer that adds special tokens other
        than a leading BOS.
    """
    if template == "aligner":
        return _special_prefix(tokenizer) + aligner_prompt(question, answer)
    if template == "chat":
        text = instruction.format(question=question, answer=answer)
        return ChatRenderer(tokenizer, chat_template).prompt(user_prompt(text))
    raise ValueError(f"template={template!r}: expected one of {TEMPLATES}")


def _special_prefix(tokenizer: PreTrainedTokenizerBase) -> str:
    """The text of the special tokens `tokenizer(text)` puts before a text ("" or the BOS)."""
    plain = tokenizer("a", add_special_tokens=False).input_ids
    full = tokenizer("a", add_special_tokens=True).input_ids
    if full == plain:
        return ""
    if full == [tokenizer.bos_token_id, *plain]:
        return tokenizer.bos_token
    raise ValueError(f"template='aligner': tokenizer {getattr(tokenizer, 'name_or_path', '')!r} "
                     f"adds special tokens other than one leading BOS ({full} for {plain})")
