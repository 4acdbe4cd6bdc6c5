"""Each example's loss and gradient weight, read off the batch-mean losses of this package.

A preference loss sees a pair only through its margin (Delta = rho(y_w) - rho(y_l) for the DPO
family, the averaged log-prob margin for SimPO, the log-ratio r for one KTO example), so its
behaviour is two curves of that margin: the loss, and the *gradient weight* -dL/dDelta, the
factor by which a pair's gradient of log pi(y_w) - log pi(y_l) is scaled. DPO's weight is
beta * sigma(-beta Delta): beta / 2 at Delta = 0, vanishing once a pair is ranked well; IPO's is
2 (1/(2 beta) - Delta), negative past its target margin.

`loss_and_weight` computes both with `jax.grad` through the loss functions themselves (no
formula is restated here), one single-example batch per point:

    margins = np.linspace(-8, 8, 161)
    loss_N, weight_N = loss_and_weight(dpo_loss, margins, 0.0, 0.0, 0.0, beta=0.1)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alignjax.logprobs import Array


def loss_and_weight(loss_fn: Callable[..., tuple[Array, Any]], x_N: Array, *others: Any,
                    **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-example loss and gradient weight -dL/dx of a batch-mean loss, at each x of `x_N`.

    `loss_fn` is called on N one-example batches (vmapped): `loss_fn(x[None], *o[None],
    **kwargs)`, with `x_N[n]` as its first positional argument (e.g. the policy's chosen
    log-prob, so that with the other log-probs at 0 it *is* the margin) and `others` after it.
    Because each batch holds one example, the batch mean is that example's loss.

    Args:
      loss_fn: a loss of `alignjax.losses` returning `(loss, metrics)`, e.g. `dpo_loss`.
      x_N: [N] values of its first positional argument.
      *others: its further positional arguments, each an [N] array or a scalar (broadcast to
        [N]); booleans stay booleans (KTO's `desirable_B`).
      **kwargs: its keyword arguments (beta, label_smoothing, ...), shared by all points.

    Returns:
      (loss_N, weight_N) as float32 numpy arrays; weight_N = -d loss / d x_N, so a positive
      weight pushes x (the margin) up.
    """
    x_N = jnp.asarray(x_N, jnp.float32)
    if x_N.ndim != 1:
        raise ValueError(f"loss_and_weight: x_N must be 1-D, got shape {x_N.shape}")
    others_N = [jnp.broadcast_to(jnp.asarray(o), x_N.shape) for o in others]

    def one(x, *rest):
        return loss_fn(x[None], *(r[None] for r in rest), **kwargs)[0]

    loss_N, grad_N = jax.jit(jax.vmap(jax.value_and_grad(one)))(x_N, *others_N)
    return np.asarray(loss_N), -np.asarray(grad_N)
