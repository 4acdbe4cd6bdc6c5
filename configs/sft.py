"""SFT of SmolLM2-135M-Instruct on the chosen responses of HH-RLHF helpful pairs.

Command:
  python -m alignjax.main --config configs/sft.py --workdir runs/sft

Hardware: 2 CPU cores (float32). Runtime: 12 minutes (30 steps of 8 sequences of at most 128
tokens, and two evaluations of the 1,000 held-out chosen responses, 5 min each).
Expected result (measured): the held-out NLL of the chosen responses (eval/sft/nll) falls from
2.855 to 2.638 nats per token (perplexity 17.4 -> 14.0).
"""

from configs import common


def get_config(arg=None):
    del arg
    c = common.base("sft")
    c.steps = 30
    c.eval_every = 30
    c.optim.learning_rate = 2e-5
    c.optim.warmup_steps = 4
    return c
