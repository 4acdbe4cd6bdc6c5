"""RLOO moves SmolLM2-135M-Instruct towards positive movie reviews, online (no critic).

REINFORCE with the leave-one-out baseline over 4 samples of each of 8 openings per iteration
(Ahmadian et al., 2024): the summed k1 KL to the reference subtracted from the return, one
pass over the rollout per iteration.

Command:
  .venv/bin/python -m alignjax.main --config configs/rloo.py --workdir runs/rloo

Hardware: 2 CPU cores (float32). Measured (experiments/RESULTS.md, "Online RL"; 20 iterations,
36 min 46 s on cores shared with other jobs): the held-out reward of 64 openings x 2 samples
went 0.218 (0.128 to 0.309) -> 0.510 (0.436 to 0.583), at a KL to the reference of 3.23 nats
per response (2.84 to 3.62). The workdir's eval.jsonl holds these numbers.
"""

from configs import common


def get_config(arg=None):
    c = common.rl_base("rloo")
    c.epochs = 1
    c.minibatches = 1
    c.kl.coef = 0.05
    c.iterations = 20
    c.optim.learning_rate = 2e-5  # Adam: the summed loss's scale does not set the step size
    return c
