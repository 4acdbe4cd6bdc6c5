"""REINFORCE with a running-mean baseline moves SmolLM2-135M-Instruct towards positive reviews.

Williams (1992): the return (VADER score minus the summed k1 KL to the reference) minus the
running mean of past iterations' returns, one pass over the rollout per iteration.

Command:
  .venv/bin/python -m alignjax.main --config configs/reinforce.py --workdir runs/reinforce

Hardware: 2 CPU cores (float32). Runtime and result: not measured yet; the workdir's
eval.jsonl holds the held-out reward (95% interval) and KL before and after.
"""

from configs import common


def get_config(arg=None):
    c = common.rl_base("reinforce")
    c.epochs = 1
    c.minibatches = 1
    c.kl.coef = 0.05
    c.optim.learning_rate = 1e-7  # the loss sums log-probs over the response's tokens
    return c
