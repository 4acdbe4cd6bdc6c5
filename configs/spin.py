"""SPIN (Chen et al. 2024): SmolLM2-135M-Instruct against its own answers to HH-RLHF prompts.

Each round the current model (the opponent) answers the first 64 helpful HH-RLHF prompts; the
SFT answer (the chosen response, the SFT data of configs/sft.py) is chosen and the opponent's
answer rejected, and DPO (SPIN's logistic loss, with the opponent as the reference) trains on
the pairs from the opponent; the trained model is the next round's opponent.
`alignjax/spin.py` says what each round writes; every round is resumable.

Command:
  python -m alignjax.main --config configs/spin.py --workdir runs/spin

Hardware: 2 CPU cores (float32). Runtime and result: not measured yet; tests/test_spin.py runs
two rounds on a tiny model (per-round data in the workdir, finished rounds not run again).
"""

from configs import common


def get_config(arg=None):
    del arg
    c = common.base("dpo")
    c.job = "spin"
    c.rounds = 2
    c.spin = {"prompts": 64,  # the first prompts of data.train, answered every round
              "sample_batch": 8, "max_new_tokens": 64, "prompt_buckets": (64, 128),
              "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    c.data.train = common.HH_HELPFUL
    c.data.format = "hh_rlhf"
    c.data.eval_size = 8  # held-out pairs of each round for eval/dpo/*
    c.data.max_length = 192
    c.data.max_prompt_length = 128
    c.data.buckets = (192,)
    c.steps = 14  # per round: 56 training pairs, 2 epochs of 8
    c.eval_every = 14
    c.eval_at_start = False
    c.checkpoint_every = 7
    c.best_metric, c.best_mode = "eval/dpo/accuracy", "max"
    c.optim.learning_rate = 5e-6
    c.optim.warmup_steps = 2
    c.loss.beta = 0.1
    return c
