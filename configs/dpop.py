"""DPO-Positive (Pal et al. 2024, "Smaug"), a loss added in one file: this one.

  L = -log sigmoid(beta * (log pi/ref (y_w) - log pi/ref (y_l) - lam * max(0, log ref/pi (y_w))))

DPO can lower the likelihood of the chosen response as long as the rejected one falls faster;
DPOP adds a penalty once the chosen log-prob drops below the reference's. With lam = 0 it is
DPO. The loss is a pure function of the four summed log-probs; `objectives.reference_pairs`
gives it cached reference log-probs, micro-batching and the held-out `dpo/*` metrics;
`config.objective = "configs.dpop:dpop"` names the factory below.

Command (HH-RLHF helpful pairs, as configs/dpo.py):
  python -m alignjax.main --config configs/dpop.py --workdir runs/dpop --config.loss.lam=50

Result: not measured on HH-RLHF; tests/test_objectives.py checks the loss against its formula
in float64 NumPy and that lam = 0 gives DPO's loss and gradients.
"""

import functools

import jax
import jax.numpy as jnp

from alignjax import objectives
from configs import common
from configs import dpo as dpo_config


def dpop_loss(policy_chosen_logps_B, policy_rejected_logps_B, ref_chosen_logps_B,
              ref_rejected_logps_B, *, beta, lam):
    chosen_B = policy_chosen_logps_B - ref_chosen_logps_B
    rejected_B = policy_rejected_logps_B - ref_rejected_logps_B
    penalty_B = jnp.maximum(0.0, -chosen_B)
    loss = -jnp.mean(jax.nn.log_sigmoid(beta * (chosen_B - rejected_B - lam * penalty_B)))
    return loss, {"dpo/loss": loss, "dpo/accuracy": jnp.mean(chosen_B > rejected_B),
                  "dpo/margin": jnp.mean(beta * (chosen_B - rejected_B)),
                  "dpop/penalty": jnp.mean(penalty_B)}


def dpop(*, beta: float = 0.1, lam: float = 50.0):
    """The DPOP objective (`lam` = the paper's lambda; 50 in its experiments)."""
    for key, value in (("beta", beta), ("lam", lam)):
        if not isinstance(value, (int, float)) or value < 0 or (key == "beta" and value == 0):
            raise ValueError(f"config.loss.{key}={value!r}: expected a number "
                             f"{'> 0' if key == 'beta' else '>= 0'}")
    return objectives.reference_pairs(functools.partial(dpop_loss, beta=beta, lam=lam))


def get_config():
    c = dpo_config.get_config("dpo")
    c.objective = "configs.dpop:dpop"
    c.loss = common.base(c.objective).loss
    return c
