"""RSO (Liu et al. 2023): DPO-family training on pairs drawn by statistical rejection sampling.

The sentiment task of configs/sentiment_dpo.py: SmolLM2-135M-Instruct samples 8 continuations
of each of the 176 training openings, VADER scores them, and statistical rejection sampling
(`alignjax/rl/rso.py`, the paper's Algorithm 1) accepts 4 of each prompt's 8 with probability
exp((r - max r) / beta) per sweep: approximately samples of the reward-tilted policy
pi * exp(r / beta). The accepted samples, paired in acceptance order and labelled by VADER,
train the hinge loss (the paper's choice; `configs/rso.py:dpo` for the sigmoid one); the
held-out openings are judged as in configs/sentiment_dpo.py. workdir/rso_stats.json holds the
one-sweep acceptance rate and the mean reward of the accepted samples against as many drawn at
random from the same candidates (95% intervals).

Command:
  python -m alignjax.main --config configs/rso.py --workdir runs/rso

Hardware: 2 CPU cores (float32). Runtime and the trained result: not measured yet (the sampling
stage is twice configs/sentiment_dpo.py's, which takes 12-18 minutes in all). Acceptance on
SmolLM2 (experiments/rso_acceptance.py, 64 openings x 16 samples, RESULTS.md): at beta 0.5,
37% of the candidates pass one sweep, and the accepted samples score +0.33 (+0.27 to +0.39)
VADER above as many drawn at random.
"""

from configs import sentiment_dpo


def get_config(arg="hinge"):
    objective = arg or "hinge"
    if objective not in ("hinge", "dpo"):
        raise ValueError(f"configs/rso.py:{objective}: expected 'hinge' or 'dpo'")
    c = sentiment_dpo.get_config(objective)
    c.pairs = "rso"  # "best_worst": configs/sentiment_dpo.py's best and worst of each prompt
    c.samples_per_prompt = 8
    c.rso = {"beta": 0.5, "num_samples": 4}  # 4 accepted of 8: 2 pairs per prompt
    c.min_reward_gap = 0.05
    return c
