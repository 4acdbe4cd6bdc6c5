"""Bradley-Terry reward model: SmolLM2-135M-Instruct + a scalar head on HH-RLHF helpful pairs.

Command:
  python -m alignjax.main --config configs/rm.py --workdir runs/rm

Hardware: 2 CPU cores (float32). Runtime: 1 h 17 min (320 steps of 8 pairs, 128 tokens, about
12.4 s each; two evaluations of the 1,000 held-out pairs, 6 minutes each). Peak RSS 11.3 GB.
Result (measured, experiments/RESULTS.md): held-out pairwise accuracy (eval/rm/accuracy) 58.1% at
step 160 and 58.2% at step 320 (95% Wilson interval 55.1-61.2%, logged beside it); held-out loss
0.679 (below log 2), margin 0.122 -> 0.175. Response length alone predicts 54.5% of these pairs
(experiments/length_baseline.py).

The Aligner's two judges (configs/aligner_stack.py, experiments/aligner_smollm2.sh) are smaller:
`configs/rm.py:helpful_small` (the same data) and `configs/rm.py:harmless_small` (HH-RLHF
harmless-base), each 64 steps of 8 pairs with 400 random pairs held out. Measured (experiments/
RESULTS.md, "Aligner end to end"): held-out accuracy 55.3% (50.4-60.1%) helpful, 62.0%
(57.2-66.6%) harmless.
"""

from configs import common

SMALL = {"helpful_small": common.HH_HELPFUL,
         "harmless_small": "shared:hh-rlhf/harmless-base/test.jsonl.gz"}


def get_config(arg=None):
    if arg and arg not in SMALL:
        raise ValueError(f"configs/rm.py:{arg}: expected one of {sorted(SMALL)} or nothing")
    c = common.base("rm")
    c.steps = 320  # 2,560 of the 5,204 training pairs, each seen once
    c.eval_every = 160
    c.checkpoint_every = 40
    c.eval_at_start = False
    c.best_metric = "eval/rm/accuracy"
    c.best_mode = "max"
    c.optim.learning_rate = 2e-5
    if arg:  # a judge: a fifth of the steps
        c.steps, c.eval_every, c.checkpoint_every = 64, 64, 32
        c.data.eval_size = 400
        c.data.train = SMALL[arg]
    return c
