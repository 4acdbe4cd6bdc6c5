"""Rewards of (prompt, response) text: Python functions, independent of the policy.

A reward function takes equal-length lists of prompts and responses and returns one float per
pair (a numpy array). `vader_sentiment` is the controlled-sentiment reward of the DPO paper's
IMDb task, computed with VADER (Hutto and Gilbert, 2014), a lexicon and rule-based sentiment
analyser that shares nothing with the policy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np

RewardFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]


@functools.cache
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_sentiment(prompts: Sequence[str], responses: Sequence[str], *,
                    include_prompt: bool = True) -> np.ndarray:
    """VADER's compound sentiment in [-1, 1] of each continuation (1 = most positive).

    Args:
      prompts: the review openings (or any prompts).
      responses: the sampled continuations.
      include_prompt: score the opening and its continuation as one text (the review), as the
        IMDb task scores the whole review; False scores the continuation alone.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    vader = _vader()
    texts = [f"{p} {r}" if include_prompt else r for p, r in zip(prompts, responses)]
    return np.array([vader.polarity_scores(t)["compound"] for t in texts], np.float32)


REWARDS: dict[str, RewardFn] = {"vader": vader_sentiment}


def get(name: str) -> RewardFn:
    """The Python reward called `name` (config key `reward`)."""
    if name not in REWARDS:
        raise ValueError(f"config.reward={name!r}: expected one of {sorted(REWARDS)}")
    return REWARDS[name]
