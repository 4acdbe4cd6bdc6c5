"""Closed-form properties of the losses, and the DPO gradient on a tiny decoder.

Each test states a value that follows from the formula alone (log 2, zero margin, -mean A, ...).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignjax import logprobs as lp
from alignjax import losses, models

TOL = {"rtol": 1e-6, "atol": 1e-6}


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_dpo_with_policy_equal_to_reference_is_log2_with_zero_margin():
    logps_B = jnp.asarray(-_rng().random(6) * 30, jnp.float32)
    other_B = jnp.asarray(-_rng(1).random(6) * 30, jnp.float32)
    loss, m = losses.dpo_loss(logps_B, other_B, logps_B, other_B, beta=0.1)
    np.testing.assert_allclose(float(loss), math.log(2.0), **TOL)
    assert float(m["dpo/margin"]) == 0.0
    assert float(m["dpo/chosen_reward"]) == 0.0 and float(m["dpo/rejected_reward"]) == 0.0
    assert float(m["dpo/accuracy"]) == 0.0  # strict r_w > r_l
    # cDPO, robust DPO and the reference-free SimPO without margin have the same fixed point.
    loss_c, _ = losses.dpo_loss(logps_B, other_B, logps_B, other_B, beta=0.1, label_smoothing=0.2)
    np.testing.assert_allclose(float(loss_c), math.log(2.0), **TOL)
    loss_r, _ = losses.robust_dpo_loss(
        logps_B, other_B, logps_B, other_B, beta=0.1, label_smoothing=0.2
    )
    np.testing.assert_allclose(float(loss_r), math.log(2.0), **TOL)
    loss_s, _ = losses.simpo_loss(logps_B, logps_B, beta=2.0, gamma=0.0)
    np.testing.assert_allclose(float(loss_s), math.log(2.0), **TOL)


def test_ipo_and_hinge_at_zero_margin():
    x = jnp.asarray(-_rng(2).random(5) * 10, jnp.float32)
    loss_ipo, _ = losses.ipo_loss(x, x, x, x, beta=0.25)
    np.testing.assert_allclose(float(loss_ipo), (1.0 / (2 * 0.25)) ** 2, **TOL)
    loss_hinge, _ = losses.hinge_loss(x, x, x, x, beta=0.25)
    np.testing.assert_allclose(float(loss_hinge), 1.0, **TOL)


def test_kto_at_reference_point_is_half_weight():
    x = jnp.asarray(-_rng(3).random(4) * 10, jnp.float32)
    desirable = jnp.array([True, False, True, False])
    loss, m = losses.kto_loss(
        x, x, desirable, beta=0.1, reference_point=0.0, desirable_weight=1.0, undesirable_weight=3.0
    )
    np.testing.assert_allclose(float(loss), 0.5 * (0.5 * 1.0 + 0.5 * 3.0), **TOL)
    assert float(m["kto/chosen_reward/count"]) == 2.0


def test_bradley_terry_with_equal_rewards_is_log2():
    r = jnp.asarray(_rng(4).normal(size=7), jnp.float32)
    loss, m = losses.bradley_terry_loss(r, r)
    np.testing.assert_allclose(float(loss), math.log(2.0), **TOL)
    assert float(m["rm/accuracy"]) == 0.0 and float(m["rm/margin"]) == 0.0
    # A margin m shifts the logit: equal rewards and margin m give log(1 + e^m).
    loss_m, _ = losses.bradley_terry_loss(r, r, margin=1.5)
    np.testing.assert_allclose(float(loss_m), math.log1p(math.exp(1.5)), **TOL)


def test_ppo_with_ratio_one_clips_nothing_and_is_minus_mean_advantage():
    rng = _rng(5)
    logps = jnp.asarray(-rng.random((3, 8)), jnp.float32)
    adv = jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)
    mask = np.zeros((3, 8), np.float32)
    mask[0, 2:7], mask[1, 3:4], mask[2, 1:8] = 1, 1, 1
    loss, m = losses.ppo_policy_loss(logps, logps, adv, jnp.asarray(mask))
    assert float(m["ppo/clipfrac"]) == 0.0
    np.testing.assert_allclose(float(m["ppo/approx_kl"]), 0.0, atol=1e-12)
    np.testing.assert_allclose(float(m["ppo/ratio"]), 1.0, **TOL)
    want = -np.sum(np.asarray(adv) * mask) / mask.sum()
    np.testing.assert_allclose(float(loss), want, **TOL)
    # The gradient is -A * grad log pi: the policy gradient itself.
    grad = jax.grad(lambda lp_: losses.ppo_policy_loss(lp_, logps, adv, jnp.asarray(mask))[0])(
        logps
    )
    np.testing.assert_allclose(np.asarray(grad), -np.asarray(adv) * mask / mask.sum(), **TOL)


def test_value_loss_with_values_equal_to_returns_is_zero():
    v = jnp.asarray(_rng(6).normal(size=(2, 5)), jnp.float32)
    loss, m = losses.value_loss(v, v + 0.1, v, jnp.ones((2, 5)))
    assert float(loss) == 0.0 and float(m["ppo/value_clipfrac"]) == 0.0


def test_sft_loss_unchanged_when_masked_logits_change():
    rng = _rng(7)
    logits = jnp.asarray(rng.normal(size=(2, 9, 13)), jnp.float32)
    ids = jnp.asarray(rng.integers(0, 13, size=(2, 9)))
    mask = np.zeros((2, 9), np.float32)
    mask[0, 3:8], mask[1, 5:9] = 1, 1
    loss, _ = losses.sft_loss(lp.token_logprobs(logits, ids), jnp.asarray(mask))
    # Logits at position t score token t + 1: change every position whose target is masked.
    target_masked = np.concatenate([mask[:, 1:], np.ones((2, 1), np.float32)], axis=1) == 0
    noise = jnp.asarray(rng.normal(size=logits.shape) * 100, jnp.float32)
    perturbed = jnp.where(jnp.asarray(target_masked)[..., None], logits + noise, logits)
    loss2, _ = losses.sft_loss(lp.token_logprobs(perturbed, ids), jnp.asarray(mask))
    assert float(loss2) == float(loss)
    # ...and a change on a trained position does change it.
    loss3, _ = losses.sft_loss(
        lp.token_logprobs(logits.at[0, 4, 0].add(5.0), ids), jnp.asarray(mask)
    )
    assert float(loss3) != float(loss)


def test_aligner_loss_ignores_everything_before_the_correction():
    rng = _rng(8)
    vocab, length = 11, 12
    logits = jnp.asarray(rng.normal(size=(2, length, vocab)), jnp.float32)
    ids = jnp.asarray(rng.integers(0, vocab, size=(2, length)))
    attention = np.ones((2, length), np.float32)
    attention[1, 10:] = 0  # row 1 is padded after its EOS at position 9
    start = jnp.array([5, 7])
    loss, m = losses.aligner_loss(lp.token_logprobs(logits, ids), jnp.asarray(attention), start)
    np.testing.assert_allclose(float(m["aligner/nll/count"]), (12 - 5) + (10 - 7))
    # Rewrite the question and original answer (tokens < start) and every logit predicting them
    # (positions < start - 1), and the padding: the loss is bitwise unchanged.
    before_tok = np.arange(length)[None, :] < np.asarray(start)[:, None]
    before_logit = np.arange(length)[None, :] < np.asarray(start)[:, None] - 1
    new_ids = jnp.where(jnp.asarray(before_tok), (ids + 3) % vocab, ids)
    new_logits = jnp.where(jnp.asarray(before_logit)[..., None], logits * -7.0 + 2.0, logits)
    new_logits = new_logits.at[1, 10:].set(123.0)
    loss2, _ = losses.aligner_loss(
        lp.token_logprobs(new_logits, new_ids), jnp.asarray(attention), start
    )
    assert float(loss2) == float(loss)
    # The first correction token (scored by the logits at start - 1) does count.
    loss3, _ = losses.aligner_loss(
        lp.token_logprobs(logits.at[0, 4, 0].add(3.0), ids), jnp.asarray(attention), start
    )
    assert float(loss3) != float(loss)


def test_orpo_with_equal_logps_is_nll_plus_beta_log2():
    a = jnp.asarray(-_rng(9).random(4) - 0.1, jnp.float32)
    loss, m = losses.orpo_loss(a, a, jnp.asarray(1.25), beta=0.3)
    np.testing.assert_allclose(float(loss), 1.25 + 0.3 * math.log(2.0), **TOL)
    np.testing.assert_allclose(float(m["orpo/log_odds"]), 0.0, atol=1e-7)


def test_rloo_and_grpo_advantages_sum_to_zero_per_group():
    r = jnp.asarray(_rng(10).normal(size=12), jnp.float32)
    for adv in (
        losses.rloo_advantages(r, group_size=4),
        losses.grpo_advantages(r, group_size=4),
    ):
        np.testing.assert_allclose(np.asarray(adv).reshape(3, 4).sum(-1), 0.0, atol=1e-5)


def _tiny_sequence_logps():
    """A tiny `alignjax.models.Transformer` (float32), split once into graphdef and params."""
    cfg = models.tiny_config(
        "llama",
        num_layers=1,
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        num_kv_heads=1,
    )
    graphdef, params = nnx.split(models.Transformer(cfg, rngs=nnx.Rngs(0)))
    rng = _rng(11)
    ids = jnp.asarray(rng.integers(3, cfg.vocab_size, size=(4, 8)))
    attention = np.ones((4, 8), np.float32)
    attention[1, 7:], attention[3, 5:] = 0, 0  # uneven lengths, right padded
    completion = attention.copy()
    completion[:, :3] = 0
    attention, completion = jnp.asarray(attention), jnp.asarray(completion)

    def sequence_logps(params):
        logits = nnx.merge(graphdef, params)(ids, attention)
        return lp.sequence_logprobs(lp.token_logprobs(logits, ids), completion)

    return params, sequence_logps


def test_dpo_gradient_equals_analytic_form_on_tiny_model():
    """grad L = -beta/B sum_b sigma(-beta Delta_b) (grad log pi(y_w,b) - grad log pi(y_l,b)).

    Rafailov et al. (2023), Sec. 4 ("What does the DPO update do?"). The model computes in
    float32 (the only precisions `ModelConfig` offers), so the two float32 evaluations of the same
    gradient agree to float32 rounding, not to 1e-12.
    """
    beta = 0.7
    params, sequence_logps = _tiny_sequence_logps()
    ref_B = jnp.asarray(_rng(12).normal(size=4) * 2.0, jnp.float32)

    def loss_fn(params):
        chosen_B, rejected_B = lp.split_pair(sequence_logps(params))
        return losses.dpo_loss(chosen_B, rejected_B, ref_B[:2], ref_B[2:], beta=beta)[0]

    # One program: the loss gradient by autodiff, and d log pi(y_b) / d params for each b.
    grad, logps_B, jac = jax.jit(
        lambda p: (jax.grad(loss_fn)(p), sequence_logps(p), jax.jacrev(sequence_logps)(p))
    )(params)
    chosen_B, rejected_B = logps_B[:2], logps_B[2:]
    delta_B = (chosen_B - ref_B[:2]) - (rejected_B - ref_B[2:])
    weight_B = beta * jax.nn.sigmoid(-beta * delta_B) / 2.0
    assert np.all(np.asarray(weight_B) > 1e-3)  # both pairs contribute
    analytic = jax.tree.map(lambda j: -jnp.tensordot(weight_B, j[:2] - j[2:], axes=1), jac)
    leaves, analytic_leaves = jax.tree.leaves(grad), jax.tree.leaves(analytic)
    scale = max(float(jnp.abs(a).max()) for a in analytic_leaves)
    assert scale > 0
    for g, a in zip(leaves, analytic_leaves, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(a), rtol=1e-5, atol=1e-6 * scale)
