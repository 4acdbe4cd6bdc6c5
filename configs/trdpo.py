"""TR-DPO (Gorbatovski et al. 2024): DPO whose reference follows the policy, on HH-RLHF.

Every `reference.tau` steps the reference becomes `alpha * policy + (1 - alpha) * reference`
("soft", the default here) or the policy itself ("hard"); everything else is configs/dpo.py.
Each moved reference is saved in workdir/reference/<step>/, so a resumed run continues with
the reference it had (alignjax/reference.py).

Command:
  python -m alignjax.main --config configs/trdpo.py --workdir runs/trdpo
  python -m alignjax.main --config configs/trdpo.py:hard --workdir runs/trdpo_hard

The reference model is held in memory (`ref_cache = False`): with a reference that moves every
10 steps, the cached log-probs would be computed again over all training pairs at every move
(`ref_cache = True` does that, exactly: tests/test_reference.py).

Hardware: 2 CPU cores (float32). Runtime and result: not measured yet (configs/dpo.py, the
fixed-reference run on the same data, takes 44 minutes; the live reference adds a forward pass
to every step). tests/test_reference.py runs it on a tiny model (cached = live, exact resume).
"""

from configs import dpo


def get_config(arg="soft"):
    sync = arg or "soft"
    if sync not in ("soft", "hard"):
        raise ValueError(f"configs/trdpo.py:{sync}: expected 'soft' or 'hard'")
    c = dpo.get_config("dpo")
    c.ref_cache = False
    c.reference.sync = sync
    c.reference.tau = 10  # 4 references over the 40 steps
    c.reference.alpha = 0.6 if sync == "soft" else 1.0
    return c
