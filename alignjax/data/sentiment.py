"""Movie-review openings for the controlled-sentiment task (the DPO paper's IMDb setting).

The task: continue the opening of a movie review; the true reward is the sentiment of the
review. The openings here are written for this package (no review text is copied), built from
subjects and neutral lead-ins, so that a model's continuations go either way.
"""

from __future__ import annotations

_SUBJECTS = (
    "This movie", "The film", "The sequel", "This documentary", "The new thriller",
    "This comedy", "The remake", "This horror film", "The animated feature", "This drama",
    "The director's latest picture", "This romantic comedy", "The war film", "This musical",
    "The biopic", "This science fiction film", "The courtroom drama", "This western",
    "The family film", "This crime story",
)
_LEAD_INS = (
    "is", "was", "turned out to be", "starts with", "left me", "made me feel",
    "has a cast that", "tells the story of", "runs two hours and", "has a soundtrack that",
    "ends with", "reminded me",
)

OPENINGS: tuple[str, ...] = tuple(f"{s} {lead}" for lead in _LEAD_INS for s in _SUBJECTS)


def review_prompt(opening: str) -> list[dict[str, str]]:
    """The chat the policy continues: an instruction to write the review, and its opening."""
    return [{"role": "user", "content": f"Continue this movie review: \"{opening}\""}]
