"""Iterative online DPO: rounds of (sample pairs from the current policy, label, train).

The sentiment task and the sample budget of configs/sentiment_dpo.py (4 samples of each of the
176 training openings, 30 DPO steps of 8 pairs), spent in 3 rounds: round k samples 4
continuations of its own 58 openings from the policy of round k - 1 (round 1: the model),
VADER labels the best and the worst as a pair, and 10 DPO steps train on them with that
round's starting policy as the reference. workdir/round_<k>/ holds the round's pairs.jsonl and
its training run (train/, with the exported policy that round k + 1 starts from). The 64
held-out openings are judged, against the initial model's samples, after every round.
`configs/sentiment_dpo.py` is the one-round (offline) version of the same budget.

Command:
  python -m alignjax.main --config configs/online_dpo.py --workdir runs/online_dpo

Hardware: 2 CPU cores (float32). Measured (experiments/RESULTS.md, "Iterative preference
methods", commit e60f352, 22 min 37 s beside another job, peak RSS 10.0 GB): held-out VADER
reward 0.173 -> 0.215 -> 0.344 after rounds 1-3 (95% CI 0.260 to 0.427), paired gain over the
initial model +0.171 (+0.064 to +0.277), KL 1.44 nats; against configs/sentiment_dpo.py on the
same budget, paired by prompt, +0.055 (-0.055 to +0.166): no significant difference.
"""

from configs import sentiment_dpo


def get_config(arg=None):
    c = sentiment_dpo.get_config(arg)
    c.rounds = 3  # the 176 training openings in 3 slices of 58 (2 left over)
    c.steps = 10  # per round: 30 in all, as configs/sentiment_dpo.py
    c.eval_every = 10
    c.checkpoint_every = 10
    c.keep_checkpoints = 2
    c.optim.warmup_steps = 2
    return c
