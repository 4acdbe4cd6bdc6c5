"""sDPO (Kim et al. 2024): DPO in stages, each stage's reference the policy at its start.

The 320 training pairs of configs/dpo.py, in the order of `data.train`, are cut into
`data.stages` consecutive parts, trained one after the other for `steps / stages` steps each;
at the start of every stage after the first the reference becomes the policy, and its
log-probs on that stage's pairs are computed then (the cache is fingerprinted by the reference's
checksums, so a resumed run reads it back). One optimiser and learning-rate schedule span the
stages. Each stage's reference is saved in workdir/reference/<step>/ (alignjax/reference.py).

Command:
  python -m alignjax.main --config configs/sdpo.py --workdir runs/sdpo
  python -m alignjax.main --config configs/sdpo.py:3 --workdir runs/sdpo3   # three stages

Hardware: 2 CPU cores (float32). Runtime and result: not measured yet (configs/dpo.py, one
stage, takes 44 minutes; each stage here computes the reference log-probs of its own pairs, so
the reference passes cost about what one pass over all pairs costs).
tests/test_reference.py runs it on a tiny model: after each stage's first step the DPO loss is
log 2 (the policy is the reference), cached and live reference alike.
"""

from configs import dpo


def get_config(arg="2"):
    stages = int(arg or 2)
    c = dpo.get_config("dpo")
    if c.steps % stages:
        raise ValueError(f"configs/sdpo.py:{stages}: the {c.steps} steps do not split into "
                         f"{stages} stages")
    c.data.stages = stages
    return c
