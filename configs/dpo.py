"""DPO (or any loss of its family) from SmolLM2-135M-Instruct on HH-RLHF helpful pairs.

Command:
  python -m alignjax.main --config configs/dpo.py --workdir runs/dpo
  python -m alignjax.main --config configs/dpo.py:ipo --workdir runs/ipo   # another loss

Hardware: 2 CPU cores (float32). Runtime: 44 minutes (reference log-probs of the 320 training
and 1,000 held-out pairs, once, 12 min; 40 steps of 8 pairs of at most 128 tokens; held-out
evaluations at steps 20 and 40, 9 min each).
Expected result (measured, experiments/RESULTS.md): held-out implicit-reward accuracy
(eval/dpo/accuracy) 56.1% at step 20 and 55.5% at step 40 (95% interval 52.4-58.6%), margin
(eval/dpo/margin) 0.0226 -> 0.0271; eval/dpo/kl_chosen is the mean log-ratio to the reference
on held-out chosen responses (0.32 nats per sequence; experiments/policy_kl.py gives the exact
KL, 0.0039 nats per token).
"""

from configs import common


def get_config(arg="dpo"):
    c = common.base()
    c.objective = arg or "dpo"
    c.steps = 40
    c.eval_every = 20
    c.eval_at_start = False  # the policy starts as the reference: accuracy 0, margin 0
    c.data.train_size = 320  # one epoch of 40 x 8 pairs; the reference pass covers just these
    c.best_metric = f"eval/{c.objective if c.objective in ('simpo', 'orpo') else 'dpo'}/accuracy"
    c.best_mode = "max"
    c.optim.learning_rate = 1e-5
    c.optim.warmup_steps = 4
    c.loss.beta = 0.1
    return c
