"""`losses.loss_and_weight` against the closed forms of each loss and its margin derivative."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax import losses

TOL = {"rtol": 1e-5, "atol": 1e-6}
MARGINS = np.linspace(-12.0, 12.0, 97)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_dpo_and_cdpo_weights():
    beta, eps = 0.3, 0.2
    loss, weight = losses.loss_and_weight(losses.dpo_loss, MARGINS, 0.0, 0.0, 0.0, beta=beta)
    np.testing.assert_allclose(loss, np.log1p(np.exp(-beta * MARGINS)), **TOL)
    np.testing.assert_allclose(weight, beta * _sigmoid(-beta * MARGINS), **TOL)
    _, at_zero = losses.loss_and_weight(losses.dpo_loss, [0.0], 0.0, 0.0, 0.0, beta=beta)
    np.testing.assert_allclose(at_zero, [beta / 2], **TOL)
    # cDPO: the weight turns negative once sigma(beta Delta) > 1 - eps.
    _, w_c = losses.loss_and_weight(losses.dpo_loss, MARGINS, 0.0, 0.0, 0.0, beta=beta,
                                    label_smoothing=eps)
    s = _sigmoid(beta * MARGINS)
    np.testing.assert_allclose(w_c, beta * ((1 - eps) * (1 - s) - eps * s), **TOL)
    assert w_c[-1] < 0 < w_c[0]


def test_robust_dpo_weight_stays_positive():
    beta, eps = 0.5, 0.1
    _, weight = losses.loss_and_weight(losses.robust_dpo_loss, MARGINS, 0.0, 0.0, 0.0, beta=beta,
                                       label_smoothing=eps)
    s = _sigmoid(beta * MARGINS)
    want = beta * ((1 - eps) * (1 - s) + eps * s) / (1 - 2 * eps)
    np.testing.assert_allclose(weight, want, **TOL)
    assert np.all(weight > 0)


def test_ipo_and_hinge():
    beta = 0.25
    loss, weight = losses.loss_and_weight(losses.ipo_loss, MARGINS, 0.0, 0.0, 0.0, beta=beta)
    np.testing.assert_allclose(loss, (MARGINS - 1 / (2 * beta)) ** 2, **TOL)
    np.testing.assert_allclose(weight, -2 * (MARGINS - 1 / (2 * beta)), **TOL)
    assert MARGINS[np.argmin(loss)] == 1 / (2 * beta)  # 2.0 lies on the grid
    loss_h, weight_h = losses.loss_and_weight(losses.hinge_loss, MARGINS, 0.0, 0.0, 0.0,
                                              beta=beta)
    np.testing.assert_allclose(loss_h, np.maximum(0.0, 1 - beta * MARGINS), **TOL)
    inside = beta * MARGINS < 1
    np.testing.assert_allclose(weight_h[inside], beta, **TOL)
    np.testing.assert_allclose(weight_h[~inside], 0.0, **TOL)


def test_simpo_margin_shift_and_kto_sides():
    beta, gamma = 2.0, 0.5
    loss, weight = losses.loss_and_weight(losses.simpo_loss, MARGINS, 0.0, beta=beta,
                                          gamma=gamma)
    np.testing.assert_allclose(loss, np.log1p(np.exp(-(beta * MARGINS - gamma))), **TOL)
    np.testing.assert_allclose(weight, beta * _sigmoid(-(beta * MARGINS - gamma)), **TOL)
    beta = 0.1
    for desirable, sign in ((True, 1.0), (False, -1.0)):
        loss, weight = losses.loss_and_weight(losses.kto_loss, MARGINS, 0.0, desirable,
                                              beta=beta, reference_point=0.0)
        s = _sigmoid(sign * beta * MARGINS)
        np.testing.assert_allclose(loss, 1 - s, **TOL)
        np.testing.assert_allclose(weight, sign * beta * s * (1 - s), **TOL)


def test_per_example_values_add_up_to_the_batch_loss_and_gradient():
    rng = np.random.default_rng(0)
    pc, pr, rc, rr = (jnp.asarray(-rng.random(8) * 40, jnp.float32) for _ in range(4))
    loss_B, weight_B = losses.loss_and_weight(losses.dpo_loss, pc, pr, rc, rr, beta=0.1)
    batch_loss, grad = jax.value_and_grad(
        lambda x: losses.dpo_loss(x, pr, rc, rr, beta=0.1)[0])(pc)
    np.testing.assert_allclose(loss_B.mean(), float(batch_loss), **TOL)
    np.testing.assert_allclose(-weight_B / 8, np.asarray(grad), **TOL)
    # The margin is all DPO sees: moving it onto the rejected side changes nothing.
    delta = np.asarray((pc - rc) - (pr - rr))
    loss_d, weight_d = losses.loss_and_weight(losses.dpo_loss, delta, 0.0, 0.0, 0.0, beta=0.1)
    np.testing.assert_allclose(loss_d, loss_B, **TOL)
    np.testing.assert_allclose(weight_d, weight_B, **TOL)
    assert math.isclose(float(loss_d[0]), float(np.log1p(np.exp(-0.1 * delta[0]))), rel_tol=1e-5)


def test_rejects_a_grid_that_is_not_one_dimensional():
    with pytest.raises(ValueError, match="1-D"):
        losses.loss_and_weight(losses.dpo_loss, np.zeros((2, 2)), 0.0, 0.0, 0.0, beta=0.1)
