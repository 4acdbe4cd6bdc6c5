"""GRPO moves SmolLM2-135M-Instruct towards positive movie reviews, online (no critic).

Group-relative advantages over 8 samples of each of 4 openings per iteration, the k3 KL to the
reference as a loss term (beta 0.04), the original sequence-mean aggregation. Variants:
`--config.loss.aggregation=token` (DAPO), `=unnormalized` with `--config.scale_rewards=False`
(Dr. GRPO), `--config.loss.importance=sequence --config.loss.clip_eps=3e-4` (GSPO).

Command:
  .venv/bin/python -m alignjax.main --config configs/grpo.py --workdir runs/grpo

Hardware: 2 CPU cores (float32). Measured (experiments/RESULTS.md, "Online RL"; 15 iterations,
43 min 51 s on cores shared with other jobs): the held-out reward of 64 openings x 2 samples
went 0.193 (0.104 to 0.283) -> 0.731 (0.675 to 0.787), at a KL to the reference of 5.95 nats
per response (5.39 to 6.52). The workdir's eval.jsonl holds these numbers.
"""

from configs import common


def get_config(arg=None):
    c = common.rl_base("grpo")
    c.prompts_per_iteration = 4
    c.samples_per_prompt = 8
    c.kl.placement = "loss"
    c.kl.coef = 0.04
    c.iterations = 15
    c.optim.learning_rate = 1e-5
    return c
