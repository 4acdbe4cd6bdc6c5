"""Every loss and estimator jit-compiles once per shape, stays finite on fully masked rows, and
its masked means and token-mean losses accumulate exactly over micro-batches."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax import logprobs as lp
from alignjax import losses

B, L = 4, 10


def _tokens(seed, empty_rows=()):
    rng = np.random.default_rng(seed)
    logps = jnp.asarray(-rng.gamma(1.0, 1.0, size=(B, L)), jnp.float32)
    other = jnp.asarray(logps + rng.normal(scale=0.3, size=(B, L)), jnp.float32)
    values = jnp.asarray(rng.normal(size=(B, L)), jnp.float32)
    mask = np.zeros((B, L), np.float32)
    for b in range(B):
        start = int(rng.integers(1, 4))
        mask[b, start : start + int(rng.integers(1, L - start + 1))] = 1
    mask[list(empty_rows)] = 0
    return logps, other, values, jnp.asarray(mask)


def _seq(seed):
    return jnp.asarray(-np.random.default_rng(seed).random(B) * 5 - 0.1, jnp.float32)


def _case_inputs(name, seed, empty_rows):
    """Inputs of fixed shapes for each case; `empty_rows` are fully masked where masks exist."""
    logps, other, values, mask = _tokens(seed, empty_rows)
    pc, pr, rc, rr = (_seq(seed + i) for i in range(4))
    desirable = jnp.asarray(np.random.default_rng(seed).random(B) > 0.5)
    rewards = jnp.asarray(np.random.default_rng(seed).normal(size=B), jnp.float32)
    start = jnp.asarray(np.random.default_rng(seed).integers(1, L, size=B))
    attention = np.ones((B, L), np.float32)
    attention[:, L - 1] = 0  # one padding position
    attention[list(empty_rows)] = 0
    attention = jnp.asarray(attention)
    return {
        "sft": (logps, mask),
        "sft_seq": (logps, mask),
        "aligner": (logps, attention, start),
        "bradley_terry": (pc, pr),
        "dpo": (pc, pr, rc, rr),
        "robust_dpo": (pc, pr, rc, rr),
        "ipo": (pc, pr, rc, rr),
        "ipo_norm": (pc, pr, rc, rr, lp.sequence_lengths(mask), lp.sequence_lengths(mask)),
        "hinge": (pc, pr, rc, rr),
        "simpo": (pc, pr),
        "orpo": (pc, pr, jnp.float32(1.5)),
        "kto": (pc, rc, desirable, pr, rr),
        "ppo": (logps, other, values, mask),
        "ppo_dual_seq": (logps, other, values, mask),
        "value": (values, values + 0.1, values * 0.5, mask),
        "reinforce": (logps, mask, rewards, rewards * 0.3),
        "gae": (values, values * 2, mask),
        "whiten": (values, mask),
        "kl_k3": (logps, other, mask),
        "shaped_rewards": (rewards, values, mask),
        "rloo": (rewards,),
        "grpo": (rewards,),
        "adaptive_kl": (jnp.float32(0.2), jnp.float32(5.5 + seed)),
    }[name]


def _kto(pc, rc, desirable, kl_p, kl_r):
    z = losses.kto_reference_point(kl_p, kl_r)
    return losses.kto_loss(pc, rc, desirable, beta=0.1, reference_point=z)


CASES = {
    "sft": losses.sft_loss,
    "sft_seq": functools.partial(losses.sft_loss, per_sequence_sum=True),
    "aligner": losses.aligner_loss,
    "bradley_terry": functools.partial(losses.bradley_terry_loss, margin=0.5, center_coef=0.01),
    "dpo": functools.partial(losses.dpo_loss, beta=0.1, label_smoothing=0.1),
    "robust_dpo": functools.partial(losses.robust_dpo_loss, beta=0.1, label_smoothing=0.1),
    "ipo": functools.partial(losses.ipo_loss, beta=0.1),
    "ipo_norm": lambda pc, pr, rc, rr, lc, lr: losses.ipo_loss(
        pc, pr, rc, rr, beta=0.1, chosen_lengths_B=lc, rejected_lengths_B=lr
    ),
    "hinge": functools.partial(losses.hinge_loss, beta=0.1),
    "simpo": functools.partial(losses.simpo_loss, beta=2.0, gamma=0.5),
    "orpo": losses.orpo_loss,
    "kto": _kto,
    "ppo": losses.ppo_policy_loss,
    "ppo_dual_seq": functools.partial(losses.ppo_policy_loss, dual_clip=3.0, sequence_mean=True),
    "value": losses.value_loss,
    "reinforce": losses.reinforce_loss,
    "gae": losses.gae,
    "whiten": losses.masked_whiten,
    "kl_k3": functools.partial(losses.kl_penalty, estimator="k3"),
    "shaped_rewards": functools.partial(losses.shaped_rewards, kl_coef=0.05),
    "rloo": functools.partial(losses.rloo_advantages, group_size=2),
    "grpo": functools.partial(losses.grpo_advantages, group_size=2),
    "adaptive_kl": functools.partial(
        losses.adaptive_kl_update, target=6.0, horizon=1e4, n_steps=64
    ),
}


def _finite(tree):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", sorted(CASES))
def test_jits_once_and_stays_finite_with_fully_masked_rows(name):
    traces = []

    def traced(*args):
        traces.append(1)
        return CASES[name](*args)

    fn = jax.jit(traced)
    first = fn(*_case_inputs(name, 0, empty_rows=()))
    second = fn(*_case_inputs(name, 1, empty_rows=(1,)))
    third = fn(*_case_inputs(name, 2, empty_rows=range(B)))  # everything masked
    assert len(traces) == 1, "retraced: a data-dependent shape or a Python branch on data"
    for out in (first, second, third):
        assert _finite(out), out
    # Outputs do depend on the data (nothing constant-folded by accident).
    assert not all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True)
    )


@pytest.mark.parametrize("name", ["sft", "aligner", "ppo", "ppo_dual_seq", "value", "reinforce"])
def test_gradients_are_finite_and_zero_on_fully_masked_rows(name):
    args = _case_inputs(name, 3, empty_rows=(2,))
    grad = jax.grad(lambda x: CASES[name](x, *args[1:])[0])(args[0])
    assert _finite(grad)
    np.testing.assert_array_equal(np.asarray(grad[2]), 0.0)


def _split(tree, parts=2):
    return [
        jax.tree.map(lambda x, i=i: x[i * B // parts : (i + 1) * B // parts], tree)
        for i in range(parts)
    ]


@pytest.mark.parametrize(
    "name,count_fn",
    [
        ("sft", lambda a: lp.masked_count(lp.target_mask(a[1]))),
        ("aligner", lambda a: lp.masked_count(losses.aligner_mask(a[1], a[2]))),
        ("ppo", lambda a: lp.masked_count(a[3])),
        ("value", lambda a: lp.masked_count(a[3])),
    ],
)
def test_micro_batches_accumulate_exactly(name, count_fn):
    """With `normalizer` = the global token count, micro-batch losses and gradients add up to
    the full-batch ones, and `merge_metrics` recovers every full-batch masked mean."""
    args = _case_inputs(name, 4, empty_rows=(3,))
    full_loss, full_metrics = CASES[name](*args)
    full_grad = jax.grad(lambda x: CASES[name](x, *args[1:])[0])(args[0])
    total = count_fn(args)
    micro = _split(args)
    outs = [CASES[name](*m, normalizer=total) for m in micro]
    grads = [
        jax.grad(lambda x, m=m: CASES[name](x, *m[1:], normalizer=total)[0])(m[0]) for m in micro
    ]
    np.testing.assert_allclose(float(sum(o[0] for o in outs)), float(full_loss), rtol=1e-6)
    np.testing.assert_allclose(
        np.concatenate([np.asarray(g) for g in grads]), np.asarray(full_grad), rtol=1e-6, atol=1e-9
    )
    # The micro-batches hold different token counts, so a mean of means would be wrong.
    counts = [float(count_fn(m)) for m in micro]
    assert counts[0] != counts[1]
    merged = losses.merge_metrics(jax.tree.map(lambda *m: jnp.stack(m), *[o[1] for o in outs]))
    assert set(merged) == set(full_metrics)
    for key, value in full_metrics.items():  # every metric, the loss's own included
        np.testing.assert_allclose(float(merged[key]), float(value), rtol=1e-6, err_msg=key)


def test_kto_subset_means_merge_exactly():
    args = _case_inputs("kto", 5, empty_rows=())
    desirable = np.asarray(args[2])
    assert 0 < desirable[:2].sum() != desirable[2:].sum()  # uneven subsets per micro-batch
    outs = [
        losses.kto_loss(m[0], m[1], m[2], beta=0.1, reference_point=0.0)[1] for m in _split(args)
    ]
    _, full = losses.kto_loss(args[0], args[1], args[2], beta=0.1, reference_point=0.0)
    merged = losses.merge_metrics(jax.tree.map(lambda *m: jnp.stack(m), *outs))
    for key in ("kto/chosen_reward", "kto/rejected_reward"):
        np.testing.assert_allclose(float(merged[key]), float(full[key]), rtol=1e-6)
