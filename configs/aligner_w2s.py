"""Weak-to-strong: an Aligner's corrections of SmolLM2-135M-Instruct's answers train it by SFT,
RLHF (a reward model on corrected > original, then RLOO) and DPO (Table 4 of Ji et al., 2024, in
its layout, at the scale of a CPU).

Needs the Aligner and the two judges of experiments/aligner_smollm2.sh (runs/aligner_warmup,
runs/rm_helpful, runs/rm_harmless). Training questions: AlpacaEval questions the Aligner trained
on; evaluation: the Aligner's held-out AlpacaEval questions and BeaverTails evaluation prompts.

Command:
  python experiments/aligner_w2s.py --config configs/aligner_w2s.py --workdir runs/aligner_w2s

Hardware: 2 CPU cores (float32). Measured (experiments/RESULTS.md, "Aligner end to end"; commit
cc25590, 43 min): 48 labels (37 pairs); every cell of the table filled, one of 12 intervals
excluding zero (RLHF, BeaverTails harmlessness +41.7%, +4.2 to +75.0).
"""

import ml_collections

from configs import common


def _questions(path: str, field: str, limit: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"path": path, "field": field, "limit": limit})


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.job = "aligner_w2s"
    c.seed = 0
    c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
    c.model = ml_collections.ConfigDict({"path": "smollm2-135m-instruct", "dtype": "float32",
                                         "param_dtype": "float32"})  # the upstream model
    c.aligner_path = "runs/aligner_warmup/train/export"
    c.data = ml_collections.ConfigDict({"template": "chat"})  # the Aligner's prompt
    c.train_questions = _questions("runs/aligner_warmup/data/train.jsonl", "question", 48)
    c.eval_sets = ml_collections.ConfigDict({
        "alpaca_eval_held_out": _questions("runs/aligner_warmup/data/eval.jsonl", "question", 24),
        "beavertails": _questions("shared:pku/beavertails-evaluation.json", "prompt", 24)})
    c.judge = ml_collections.ConfigDict({"max_length": 512})
    c.judge.reward_models = ml_collections.ConfigDict({"helpful": "runs/rm_helpful/export",
                                                       "harmless": "runs/rm_harmless/export"})
    c.aligner = ml_collections.ConfigDict({"max_new_tokens": 96,
                                           "prompt_buckets": (128, 256, 512),
                                           "sample_batch": 8})  # answers and corrections

    def offline(objective: str, steps: int, lr: float) -> ml_collections.ConfigDict:
        s = common.base(objective)
        s.steps, s.batch_size, s.eval_batch_size = steps, 4, 4
        s.eval_every, s.eval_at_start, s.checkpoint_every, s.log_every = steps, False, steps, 2
        s.data.eval_size, s.data.max_length, s.data.max_prompt_length = 8, 256, 128
        s.data.buckets = (128, 256)
        s.optim.learning_rate, s.optim.warmup_steps = lr, 2
        return s

    c.sft = offline("sft", 10, 2e-5)
    c.dpo = offline("dpo", 10, 5e-6)
    c.rm = offline("rm", 10, 2e-5)
    c.rm.best_metric, c.rm.best_mode = "eval/rm/accuracy", "max"
    c.rlhf = common.rl_base("rloo")
    c.rlhf.eval_prompts = 8  # of the training questions, the RL loop's own held-out check
    c.rlhf.iterations = 4
    c.rlhf.prompts_per_iteration = 4
    c.rlhf.samples_per_prompt = 4
    c.rlhf.epochs, c.rlhf.minibatches = 1, 1
    c.rlhf.max_new_tokens = 64
    c.rlhf.prompt_buckets = (128, 256)
    c.rlhf.eval_samples = 1
    c.rlhf.optim.learning_rate = 2e-5
    return c
