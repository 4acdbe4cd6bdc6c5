"""Online RL: rewards of (prompt, response) text, rollouts, and the loop.

  rewards.py  Python rewards (VADER sentiment)
  rollout.py  sample -> score -> reference / policy / critic forwards -> a Rollout
  loop.py     the loop (job "rl") and its ALGORITHMS: ppo, grpo, rloo, reinforce
"""
