"""DPO (or any loss of its family) from SmolLM2-135M-Instruct on HH-RLHF helpful pairs.

Command:
  python -m alignjax.main --config configs/dpo.py --workdir runs/dpo
  python -m alignjax.main --config configs/dpo.py:ipo --workdir runs/ipo   # another loss
  python -m alignjax.main --config configs/dpo.py:robust_dpo --config.loss.label_smoothing=0.2 \
      --workdir runs/robust_dpo

The argument picks one of FAMILY; `config.loss` then declares every keyword of that loss with
its default (`alignjax.objectives.loss_defaults`): label_smoothing (dpo, robust_dpo, simpo),
average_logps (ipo: TRL's length-normalised form), gamma (simpo), nll (orpo), desirable_weight
and undesirable_weight (kto, trained on the pairs split into desirable and undesirable
examples).

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

FAMILY = ("dpo", "robust_dpo", "ipo", "hinge", "simpo", "orpo", "kto")


def get_config(arg="dpo"):
    objective = arg or "dpo"
    if objective not in FAMILY:
        raise ValueError(f"configs/dpo.py:{objective}: expected one of {', '.join(FAMILY)}")
    c = common.base(objective)
    c.steps = 40
    c.eval_every = 20
    c.eval_at_start = False  # the policy starts as the reference: accuracy 0, margin 0
    c.data.train_size = 320  # one epoch of 40 x 8 pairs; the reference pass covers just these
    if objective == "kto":  # unpaired examples: no pairwise accuracy
        c.best_metric, c.best_mode = "eval/kto/loss", "min"
    else:
        prefix = objective if objective in ("simpo", "orpo") else "dpo"
        c.best_metric, c.best_mode = f"eval/{prefix}/accuracy", "max"
    c.optim.learning_rate = 1e-5
    c.optim.warmup_steps = 4
    return c
