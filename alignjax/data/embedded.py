"""Data shipped inside the package: a dozen short instruction/response pairs (the quickstart).

`config.data.train = "embedded:quickstart"` writes them into the workdir (`splits.py`). They
teach SmolLM2 a fixed answer style ("Answer: ... (end)") that the held-out pairs share, so the
held-out loss falls visibly within a few steps on a CPU.
"""

from __future__ import annotations

import json

PAIRS = [
    ("Name a primary colour.", "Answer: red. (end)"),
    ("What is 2 + 3?", "Answer: 5. (end)"),
    ("Which planet do we live on?", "Answer: Earth. (end)"),
    ("What is the opposite of hot?", "Answer: cold. (end)"),
    ("How many legs does a spider have?", "Answer: 8. (end)"),
    ("What is the capital of Italy?", "Answer: Rome. (end)"),
    ("What colour is grass?", "Answer: green. (end)"),
    ("What is 10 minus 4?", "Answer: 6. (end)"),
    ("Which animal says moo?", "Answer: a cow. (end)"),
    ("What do bees make?", "Answer: honey. (end)"),
    ("What is frozen water called?", "Answer: ice. (end)"),
    ("How many days are in a week?", "Answer: 7. (end)"),
    # held out (the last `eval_size` rows of the quickstart config)
    ("What is the capital of Spain?", "Answer: Madrid. (end)"),
    ("What is 3 + 4?", "Answer: 7. (end)"),
    ("Which animal barks?", "Answer: a dog. (end)"),
    ("What colour is the sky on a clear day?", "Answer: blue. (end)"),
]


def write_quickstart(path: str) -> str:
    """Writes the pairs as JSONL rows {"prompt", "response"} and returns `path`."""
    with open(path, "w") as f:
        for prompt, response in PAIRS:
            f.write(json.dumps({"prompt": prompt, "response": response}) + "\n")
    return path
