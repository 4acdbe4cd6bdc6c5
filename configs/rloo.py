"""RLOO moves SmolLM2-135M-Instruct towards positive movie reviews, online (no critic).

REINFORCE with the leave-one-out baseline over 4 samples of each of 8 openings per iteration
(Ahmadian et al., 2024): the summed k1 KL to the reference subtracted from the return, one
pass over the rollout per iteration.

Command:
  .venv/bin/python -m alignjax.main --config configs/rloo.py --workdir runs/rloo

Hardware: 2 CPU cores (float32). Runtime and result: see the RL section of the results notes;
the workdir's eval.jsonl holds the held-out reward (95% interval) and KL before and after.
"""

from configs import common


def get_config(arg=None):
    c = common.rl_base("rloo")
    c.epochs = 1
    c.minibatches = 1
    c.kl.coef = 0.05
    c.optim.learning_rate = 1e-7  # the loss sums log-probs over the response's tokens
    return c
