"""GRPO moves SmolLM2-135M-Instruct towards positive movie reviews, online (no critic).

Group-relative advantages over 8 samples of each of 4 openings per iteration, the k3 KL to the
reference as a loss term (beta 0.04), the original sequence-mean aggregation. Variants:
`--config.loss.aggregation=token` (DAPO), `=unnormalized` with `--config.scale_rewards=False`
(Dr. GRPO), `--config.loss.importance=sequence --config.loss.clip_eps=3e-4` (GSPO).

Command:
  .venv/bin/python -m alignjax.main --config configs/grpo.py --workdir runs/grpo

Hardware: 2 CPU cores (float32). Runtime and result: see the RL section of the results notes;
the workdir's eval.jsonl holds the held-out reward (95% interval) and KL before and after.
"""

from configs import common


def get_config(arg=None):
    c = common.rl_base("grpo")
    c.prompts_per_iteration = 4
    c.samples_per_prompt = 8
    c.kl.placement = "loss"
    c.kl.coef = 0.04
    c.optim.learning_rate = 1e-6
    return c
