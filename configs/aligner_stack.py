"""Stacking: an Aligner corrects the answers of an upstream model, optionally judged by an RM.

Answers are read from a file (default: GPT-4 Turbo's AlpacaEval answers, `original_output`;
the Claude 3 Opus and Qwen1.5-72B files in the same directory hold theirs), or sampled from one
of this library's models (`upstream.path`). Writes workdir/stacked.jsonl (question, answer,
correction) and, with `judge.reward_models` (reward models trained by configs/rm.py, e.g.
configs/rm.py:helpful_small and configs/rm.py:harmless_small), workdir/judge.json per judge:
win / tie / lose, the improvement percentage ((wins - losses) / comparisons) and the reward
gain with 95% bootstrap intervals, the gain with the length change regressed out and on a
length-matched subset, and the length change.

Command:
  python -m alignjax.main --config configs/aligner_stack.py --workdir runs/aligner_stack \
      --config.model.path=runs/aligner_warmup/train/export \
      [--config.judge.reward_models.helpful=... --config.judge.reward_models.harmless=...]

Hardware: 2 CPU cores (float32). Measured by experiments/aligner_smollm2.sh (experiments/
RESULTS.md, "Aligner end to end"): on 28 held-out GPT-4 Turbo answers the corrections win 18,
tie 1, lose 9 under both small HH judges (improvement +32.1%, intervals touching zero), 36 tokens
longer, no significant gain with the length regressed out; on SmolLM2's own answers to 32
held-out questions no effect distinguishable from zero. tests/test_aligner_job.py runs it on a
tiny random model.
"""

import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.job = "aligner_stack"
    c.seed = 0
    c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
    c.model = ml_collections.ConfigDict({"path": "smollm2-135m-instruct", "dtype": "float32",
                                         "param_dtype": "float32"})  # the Aligner
    c.data = ml_collections.ConfigDict({"template": "chat"})  # the prompt it was trained on

    c.answers = ml_collections.ConfigDict()
    c.answers.path = ("shared:aligner/alpaca_eval_aligner-2b_corrects_gpt-4-turbo-2024-04-09"
                      ".json")
    c.answers.question_field = "instruction"
    c.answers.answer_field = "original_output"
    c.answers.limit = 32  # the first N rows; 0 = all
    c.answers.fit = True  # keep only answers shorter than aligner.max_new_tokens tokens

    c.upstream = ml_collections.ConfigDict()
    c.upstream.path = ""  # a model of this library: its answers replace the file's
    c.upstream.temperature = 0.0  # 0 = greedy

    c.judge = ml_collections.ConfigDict()
    # scalar-head checkpoints (objective "rm"), by name; "" = not judged by that one
    c.judge.reward_models = ml_collections.ConfigDict({"helpful": "", "harmless": ""})
    c.judge.max_length = 512

    c.aligner = ml_collections.ConfigDict()
    c.aligner.max_new_tokens = 256
    c.aligner.prompt_buckets = (128, 256, 512)
    c.aligner.sample_batch = 8
    return c
