"""Self-rewarding DPO: the model judges its own samples (an LLM-as-judge prompt) to make pairs.

Iterative online DPO (configs/online_dpo.py: 3 rounds of 58 openings x 4 samples, 10 DPO
steps each) with the true reward replaced by the policy's own judgement: each round the
current model rates every sample under `alignjax.rl.self_judge.JUDGE_TEMPLATE` with the
criterion below (its expected rating over the digits 1-5), and its best and worst of each
opening become the pair. VADER, which never labels a pair, judges the held-out openings and
the judge: workdir/round_<k>/self_judge.json holds how often the model's ordering of two samples
agrees with VADER's (95% Wilson interval), and how often its chosen answer has the higher VADER
score.

Command:
  python -m alignjax.main --config configs/self_rewarding.py --workdir runs/self_rewarding

Hardware: 2 CPU cores (float32). Measured (experiments/RESULTS.md, "Iterative preference
methods", commit e60f352, 25 min 32 s beside another job, peak RSS 10.2 GB): the model's own
ordering of two samples agrees with VADER's on 49.9%, 46.9% and 45.0% of about 330 pairs per
round (chance); the held-out VADER reward ends at 0.160 (0.078 to 0.241) from 0.173, -0.129
(-0.229 to -0.028) below offline DPO on the same budget.
"""

from configs import online_dpo


def get_config(arg=None):
    c = online_dpo.get_config(arg)
    c.pairs = "self"
    c.self_judge = {"criterion": "the movie review is positive and enthusiastic",
                    "buckets": (128, 192, 256)}
    c.min_reward_gap = 0.05  # in rating points (1-5)
    return c
