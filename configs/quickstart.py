"""Offline quickstart: SFT of the real SmolLM2-135M-Instruct on 12 embedded pairs.

Command (after `bash scripts/bootstrap.sh`):
  .venv/bin/python -m alignjax.main --config configs/quickstart.py --workdir runs/quickstart

Hardware: 2 CPU cores. Runtime: about 3 minutes (model load, compilation, 12 steps).
Expected result: the held-out SFT loss (eval/sft/nll, 4 pairs written the same way) falls from
about 4.7 to under 0.2 nats per token; the run ends with an export in runs/quickstart/export.
"""

from configs import common


def get_config(arg=None):
    del arg
    c = common.base("sft")
    c.steps = 12
    c.batch_size = 4
    c.eval_batch_size = 4
    c.log_every = 3
    c.eval_every = 6
    c.checkpoint_every = 6
    c.data.train = "embedded:quickstart"
    c.data.eval_size = 4
    c.data.holdout = "last"
    c.data.format = "sft"
    c.data.max_length = 64
    c.data.max_prompt_length = 0
    c.data.buckets = (64,)
    c.optim.learning_rate = 1e-4
    c.optim.warmup_steps = 2
    return c
