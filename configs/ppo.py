"""PPO with a critic moves SmolLM2-135M-Instruct towards positive movie reviews, online.

PPO-clip (InstructGPT's RLHF): per-token KL penalty to the frozen reference in the reward, the
VADER score on the last response token, GAE over a critic initialised from the policy, whitened
advantages, clipped policy and value losses. 8 openings x 4 samples per iteration; 64 held-out
openings are judged before and after.

Command:
  .venv/bin/python -m alignjax.main --config configs/ppo.py --workdir runs/ppo

Hardware: 2 CPU cores (float32). The workdir's eval.jsonl holds the held-out reward (95%
interval) and the KL before and after. Measured so far, only a 3-iteration smoke run (with
`--config.iterations=3 --config.max_new_tokens=24 --config.epochs=1 --config.minibatches=1
--config.micro_batches=4 --config.eval_prompts=32 --config.optim.learning_rate=5e-6
--config.critic.learning_rate=5e-5`, on cores shared with other jobs): the held-out reward went
0.189 (0.067 to 0.312) -> 0.127 (0.011 to 0.243), which is no improvement, with a KL of 0.05
nats. One iteration took 216 s: 9% sampling, 31% the reference, policy and critic forwards, and
60% the updates.
"""

from configs import common


def get_config(arg=None):
    c = common.rl_base("ppo")
    c.optim.learning_rate = 1e-6
    c.critic.learning_rate = 1e-5
    c.kl.coef = 0.05
    return c
