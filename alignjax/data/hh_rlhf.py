"""Anthropic HH-RLHF transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...") as chat messages.

A row holds two full transcripts, `chosen` and `rejected`, that share the dialogue and differ in
the final Assistant turn. The shared prompt is the text up to the last "\\n\\nAssistant:" of
each; in 17 of the 8,552 test rows the two disagree there (a response contains a made-up
"\\n\\nAssistant:" turn of its own), and the prompt is then the longest common prefix of the two
transcripts that ends with "\\n\\nAssistant:" (counted as `hh_prompt_from_common_prefix`).
"""

from __future__ import annotations

import os
import re

from alignjax.data.records import Messages

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def transcript_messages(transcript: str) -> Messages:
    """Chat messages of a transcript that starts with "\\n\\nHuman:".

    Args:
      transcript: e.g. "\\n\\nHuman: Hi\\n\\nAssistant: Hello\\n\\nHuman: How are you?".

    Returns:
      ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, ...), with
      the whitespace around each turn's text stripped.

    Raises:
      ValueError: the transcript does not start with a Human turn.
    """
    parts = _TURN.split(transcript)
    # parts = [preamble, role, text, role, text, ...]
    if parts[0].strip() or len(parts) < 3 or parts[1] != "Human":
        raise ValueError(f"does not start with {HUMAN!r}: {transcript[:60]!r}")
    return tuple(
        {"role": _ROLES[role], "content": text.strip()}
        for role, text in zip(parts[1::2], parts[2::2], strict=True)
    )


def split_pair(chosen: str, rejected: str) -> tuple[str, str, str, bool]:
    """Splits two transcripts into the shared prompt transcript and the two final responses.

    Args:
      chosen: the full transcript ending with the preferred Assistant turn.
      rejected: the same dialogue ending with the dispreferred turn.

    Returns:
      (prompt, chosen_response, rejected_response, from_common_prefix): `prompt` ends just before
      the final "\\n\\nAssistant:", responses are stripped, and `from_common_prefix` says whether
      the fallback rule (see the module docstring) was needed.

    Raises:
      ValueError: the transcripts share no prefix ending with an Assistant turn.
    """
    c_cut = chosen.rfind(ASSISTANT)
    r_cut = rejected.rfind(ASSISTANT)
    if c_cut >= 0 and c_cut == r_cut and chosen[:c_cut] == rejected[:r_cut]:
        cut, fallback = c_cut, False
    else:
        cut, fallback = os.path.commonprefix([chosen, rejected]).rfind(ASSISTANT), True
        if cut < 0:
            raise ValueError("chosen and rejected share no prompt ending with an Assistant turn")
    start = cut + len(ASSISTANT)
    return chosen[:cut], chosen[start:].strip(), rejected[start:].strip(), fallback
