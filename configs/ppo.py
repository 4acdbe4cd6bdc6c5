"""PPO with a critic moves SmolLM2-135M-Instruct towards positive movie reviews, online.

PPO-clip (InstructGPT's RLHF): per-token KL penalty to the frozen reference in the reward, the
VADER score on the last response token, GAE over a critic initialised from the policy, whitened
advantages, clipped policy and value losses. 8 openings x 4 samples per iteration; 64 held-out
openings are judged before and after.

Command:
  .venv/bin/python -m alignjax.main --config configs/ppo.py --workdir runs/ppo

Hardware: 2 CPU cores (float32). Measured (experiments/RESULTS.md, "Online RL"; 8 iterations in
40 min 8 s, then resumed to 14 in 26 min 57 s, on cores shared with other jobs): the held-out
reward of 64 openings x 2 samples went 0.218 (0.128 to 0.309) -> 0.446 (0.361 to 0.531), at a
KL to the reference of 2.14 nats per response (1.81 to 2.48); after 8 iterations it was 0.251
(0.164 to 0.338), no significant gain yet. A mean iteration took 240 s: 6% sampling, 16% the
reference, policy and critic forwards, 78% the updates.
"""

from configs import common


def get_config(arg=None):
    c = common.rl_base("ppo")
    c.iterations = 14
    c.micro_batches = 2  # each update in two halves: less activation memory, same gradient
    c.optim.learning_rate = 1e-5
    c.critic.learning_rate = 5e-5
    c.kl.coef = 0.05
    return c
