"""Truncation policies: what to do with an example longer than `max_length` tokens.

An example is a prompt of p tokens followed by one or more alternative responses of r_i tokens
(one for SFT, Aligner and KTO; chosen and rejected for pairs, which keep one shared prompt). The
response of a multi-turn SFT conversation is its last assistant turn; earlier turns count as
prompt. With M = max_length, n = p + max_i r_i:

| policy         | when n > M                                                              |
|----------------|-------------------------------------------------------------------------|
| "keep_end"     | drop tokens from the start of the prompt, keeping at least             |
|                | min(p, max_prompt_length) of its last tokens; cut the responses' ends  |
|                | if that is not enough                                                  |
| "cut_response" | keep the whole prompt and cut the responses' ends to M - p; drop the    |
|                | example if p >= M (no room for any response token)                     |
| "drop"         | drop the example                                                        |

A prompt-only example (no responses) longer than M keeps its last M tokens under "keep_end"
and is dropped otherwise. A cut response loses its EOS, as it should: the model was not shown
where it ends. Every change is counted by the caller (`alignjax.data.tokenization`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

POLICIES = ("keep_end", "cut_response", "drop")


class Kept(NamedTuple):
    """How many tokens survive: the last `prompt` prompt tokens, the first `responses[i]`."""

    prompt: int
    responses: tuple[int, ...]


def check_policy(policy: str, max_length: int, max_prompt_length: int | None) -> None:
    """Raises ValueError for an unknown policy or inconsistent lengths."""
    if policy not in POLICIES:
        raise ValueError(f"truncation={policy!r}: expected one of {POLICIES}")
    if max_length < 2:
        raise ValueError(f"max_length={max_length}: must be at least 2")
    if max_prompt_length is not None and not 1 <= max_prompt_length < max_length:
        raise ValueError(
            f"max_prompt_length={max_prompt_length}: must be in [1, max_length={max_length})"
        )


def kept_lengths(
    prompt_len: int,
    response_lens: Sequence[int],
    *,
    max_length: int,
    policy: str,
    max_prompt_length: int | None = None,
) -> Kept | None:
    """Applies a policy to token counts.

    Args:
      prompt_len: p, the prompt tokens (at least 1).
      response_lens: r_i, the tokens of each alternative response (EOS included); may be empty.
      max_length: M.
      policy: one of `POLICIES`.
      max_prompt_length: the prompt tokens "keep_end" keeps at least (if the prompt has that
        many); default M // 2.

    Returns:
      The kept counts, or None when the example is dropped.
    """
    longest = max(response_lens, default=0)
    if prompt_len + longest <= max_length:
        return Kept(prompt_len, tuple(response_lens))
    if policy == "drop":
        return None
    if not response_lens:
        return Kept(max_length, ()) if policy == "keep_end" else None
    if policy == "cut_response":
        if prompt_len >= max_length:
            return None
        kept_prompt = prompt_len
    else:  # keep_end
        floor = max_length // 2 if max_prompt_length is None else max_prompt_length
        kept_prompt = max(max_length - longest, min(prompt_len, floor), 1)
    room = max_length - kept_prompt
    return Kept(kept_prompt, tuple(min(r, room) for r in response_lens))
