"""PPO with a critic moves SmolLM2-135M-Instruct towards positive movie reviews, online.

PPO-clip (InstructGPT's RLHF): per-token KL penalty to the frozen reference in the reward, the
VADER score on the last response token, GAE over a critic initialised from the policy, whitened
advantages, clipped policy and value losses. 8 openings x 4 samples per iteration; 64 held-out
openings are judged before and after.

Command:
  .venv/bin/python -m alignjax.main --config configs/ppo.py --workdir runs/ppo

Hardware: 2 CPU cores (float32). Runtime and result: see the RL section of the results notes;
the workdir's eval.jsonl holds the held-out reward (95% interval) and KL before and after.
"""

from configs import common


def get_config(arg=None):
    c = common.rl_base("ppo")
    c.optim.learning_rate = 1e-6
    c.critic.learning_rate = 1e-5
    c.kl.coef = 0.05
    return c
