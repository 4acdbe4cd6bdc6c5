"""Bradley-Terry reward model: SmolLM2-135M-Instruct + a scalar head on HH-RLHF helpful pairs.

Command:
  python -m alignjax.main --config configs/rm.py --workdir runs/rm

Hardware: 2 CPU cores (float32). Runtime: about 40 minutes (100 steps of 8 pairs, 128 tokens;
one evaluation of 1,000 held-out pairs takes about 9 minutes).
Expected result: held-out pairwise accuracy (eval/rm/accuracy) rises from about 50% (the head
starts untrained) to at least 58% after 100 steps; the 95% Wilson interval is logged beside it.
"""

from configs import common


def get_config(arg=None):
    del arg
    c = common.base()
    c.objective = "rm"
    c.eval_every = 100
    c.eval_at_start = False
    c.best_metric = "eval/rm/accuracy"
    c.best_mode = "max"
    c.optim.learning_rate = 2e-5
    c.loss.center_coef = 0.0
    return c
