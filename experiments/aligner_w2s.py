"""Weak-to-strong from an Aligner's corrections, in the layout of Table 4 of Ji et al. (2024).

Runs the job "aligner_w2s" (alignjax/aligner_w2s.py: labels, SFT / RLHF / DPO of the upstream
model on them, the judged evaluation; each finished stage is reused) and prints its table, then
the paper's published weak-to-strong result beside it.

  python experiments/aligner_w2s.py --config configs/aligner_w2s.py --workdir runs/aligner_w2s \
      [--config.<key>=...]

The paper's setting and this one differ in every dimension that matters: there the upstream
model (Llama2-70B) is far stronger than the Aligner (Aligner-13B), the labels come from tens of
thousands of questions and GPT-4 judges the answers; here the upstream model and the Aligner are
both SmolLM2-135M-Instruct, the labels come from a few dozen questions, and two small reward
models trained on HH-RLHF judge.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alignjax import aligner_w2s  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/aligner_w2s.py", "the job's config",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/aligner_w2s", "the job's directory")

# What the paper publishes for weak-to-strong training (arXiv 2402.02416 v2, abstract): Llama2-70B
# fine-tuned on Aligner-13B's corrections gains 8.2% in helpfulness and 61.6% in harmlessness.
# Its per-method cells (SFT, RLHF, DPO on each question set) were not available offline.
PUBLISHED = {"upstream": "Llama2-70B", "aligner": "Aligner-13B", "helpfulness_pct": 8.2,
             "harmlessness_pct": 61.6}


def main(argv):
    del argv
    summary = aligner_w2s.run(_CONFIG.value, _WORKDIR.value)
    print()
    print(aligner_w2s.table(summary["results"]))
    print()
    print(f"labels: {json.dumps(summary['labels'])}; evaluation questions: "
          f"{json.dumps(summary['eval_questions'])}")
    print(f"published (weak-to-strong, {PUBLISHED['aligner']} -> {PUBLISHED['upstream']}): "
          f"helpfulness +{PUBLISHED['helpfulness_pct']}%, harmlessness "
          f"+{PUBLISHED['harmlessness_pct']}% (the abstract's headline; the per-method cells "
          "were not available offline)")


if __name__ == "__main__":
    app.run(main)
