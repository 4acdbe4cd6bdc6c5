"""Parity with TRL's own code where it can be called on tensors (PyTorch, float64).

Callable on arrays in TRL 1.x: `selective_log_softmax`, `nanstd`, the static
`CPOTrainer.get_batch_logps`, and the methods `CPOTrainer.cpo_loss` (sigmoid/cDPO, hinge, IPO,
SimPO forms, without a reference model) and `ORPOTrainer.odds_ratio_loss`. The two methods read
only a few plain attributes of `self`, so they are called unbound on a namespace carrying exactly
those; if TRL changes that, the tests skip with the reason rather than test something else.
TRL's DPO and KTO losses live inside `_compute_loss(model, inputs)` and need a model: they are
covered by the NumPy references in test_losses_numpy.py instead.
"""

import inspect
import math
import os
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax import logprobs as lp
from alignjax import losses

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from trl.trainer.utils import nanstd, selective_log_softmax

    try:
        from trl.experimental.cpo import CPOTrainer
        from trl.experimental.orpo import ORPOTrainer
    except ImportError:  # moved or removed in a later TRL
        CPOTrainer = ORPOTrainer = None

TOL = {"rtol": 1e-6, "atol": 1e-6}


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _t(x):
    return torch.from_numpy(np.asarray(x, np.float64))


def _call_trl_method(cls, name, expected_params, attrs, *args):
    """Calls `cls.name(self, *args)` with `self` a namespace of `attrs`, or skips with why."""
    if cls is None:
        pytest.skip("trl.experimental.cpo / orpo not importable in this TRL")
    fn = getattr(cls, name, None)
    if fn is None or list(inspect.signature(fn).parameters) != ["self", *expected_params]:
        pytest.skip(f"{cls.__name__}.{name} has a different signature in this TRL")
    this = types.SimpleNamespace(accelerator=types.SimpleNamespace(device="cpu"), **attrs)
    try:
        return fn(this, *args)
    except AttributeError as err:
        pytest.skip(f"{cls.__name__}.{name} now needs more of `self`: {err}")


def _batch(seed=0, batch=5, length=12, vocab=19):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(batch, length, vocab))
    ids = rng.integers(0, vocab, size=(batch, length))
    mask = np.zeros((batch, length))
    for b in range(batch):
        prompt = int(rng.integers(1, 5))
        mask[b, prompt : prompt + int(rng.integers(1, length - prompt + 1))] = 1.0
    return logits, ids, mask


def test_token_logprobs_match_selective_log_softmax():
    logits, ids, _ = _batch()
    want = selective_log_softmax(_t(logits[:, :-1]), torch.from_numpy(ids[:, 1:])).numpy()
    got = lp.token_logprobs(jnp.asarray(logits), jnp.asarray(ids))
    np.testing.assert_allclose(np.asarray(got[:, 1:]), want, **TOL)
    assert np.all(np.asarray(got[:, 0]) == 0.0)


@pytest.mark.parametrize("average", [False, True])
def test_sequence_logprobs_match_get_batch_logps(average):
    if CPOTrainer is None:
        pytest.skip("trl.experimental.cpo not importable in this TRL")
    logits, ids, mask = _batch(1)
    labels = torch.from_numpy(np.where(mask == 1, ids, -100))
    want = CPOTrainer.get_batch_logps(_t(logits), labels, average_log_prob=average).numpy()
    got = lp.sequence_logprobs(
        lp.token_logprobs(jnp.asarray(logits), jnp.asarray(ids)), jnp.asarray(mask), average=average
    )
    np.testing.assert_allclose(np.asarray(got), want, **TOL)


def _policy_logps(seed, average):
    rng = np.random.default_rng(seed)
    scale = 1.0 if average else 20.0
    return -rng.random(7) * scale - 0.05, -rng.random(7) * scale - 0.05


CPO_ATTRS = ["policy_chosen_logps", "policy_rejected_logps"]


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_dpo_without_reference_matches_trl_cpo_sigmoid(label_smoothing):
    """TRL's CPO "sigmoid" is cDPO with the reference log-probs set to zero."""
    beta = 0.3
    pc, pr = _policy_logps(2, average=False)
    attrs = {"alpha": 0.0, "beta": beta, "loss_type": "sigmoid", "label_smoothing": label_smoothing}
    want, want_chosen, want_rejected = _call_trl_method(
        CPOTrainer, "cpo_loss", CPO_ATTRS, attrs, _t(pc), _t(pr)
    )
    zeros = jnp.zeros(7)
    loss, m = losses.dpo_loss(
        jnp.asarray(pc), jnp.asarray(pr), zeros, zeros, beta=beta, label_smoothing=label_smoothing
    )
    np.testing.assert_allclose(float(loss), want.mean().item(), **TOL)
    np.testing.assert_allclose(float(m["dpo/chosen_reward"]), want_chosen.mean().item(), **TOL)
    np.testing.assert_allclose(float(m["dpo/rejected_reward"]), want_rejected.mean().item(), **TOL)


@pytest.mark.parametrize("loss_type", ["hinge", "ipo"])
def test_hinge_and_summed_ipo_match_trl_cpo(loss_type):
    beta = 0.2
    pc, pr = _policy_logps(3, average=False)
    attrs = {"alpha": 0.0, "beta": beta, "loss_type": loss_type, "label_smoothing": 0.0}
    want, _, _ = _call_trl_method(CPOTrainer, "cpo_loss", CPO_ATTRS, attrs, _t(pc), _t(pr))
    fn = losses.hinge_loss if loss_type == "hinge" else losses.ipo_loss
    zeros = jnp.zeros(7)
    loss, _ = fn(jnp.asarray(pc), jnp.asarray(pr), zeros, zeros, beta=beta)
    np.testing.assert_allclose(float(loss), want.mean().item(), **TOL)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_matches_trl_cpo_simpo(label_smoothing):
    beta, gamma = 2.5, 1.3
    pc, pr = _policy_logps(4, average=True)
    attrs = {"alpha": 0.0, "beta": beta, "loss_type": "simpo", "simpo_gamma": gamma}
    attrs["label_smoothing"] = label_smoothing
    want, want_chosen, _ = _call_trl_method(
        CPOTrainer, "cpo_loss", CPO_ATTRS, attrs, _t(pc), _t(pr)
    )
    loss, m = losses.simpo_loss(
        jnp.asarray(pc), jnp.asarray(pr), beta=beta, gamma=gamma, label_smoothing=label_smoothing
    )
    np.testing.assert_allclose(float(loss), want.mean().item(), **TOL)
    np.testing.assert_allclose(float(m["simpo/chosen_reward"]), want_chosen.mean().item(), **TOL)


def test_orpo_matches_trl_odds_ratio_loss():
    beta, nll = 0.1, 2.3
    pc, pr = _policy_logps(5, average=True)
    pc[0], pr[0] = -0.01, -3.0  # both branches of log1mexp
    out = _call_trl_method(
        ORPOTrainer, "odds_ratio_loss", CPO_ATTRS, {"beta": beta}, _t(pc), _t(pr)
    )
    per_pair, _, _, mean_ratio, mean_log_odds = out
    loss, m = losses.orpo_loss(jnp.asarray(pc), jnp.asarray(pr), jnp.asarray(nll), beta=beta)
    # TRL's trainer adds: loss = nll - mean(beta * log sigma(log_odds)).
    np.testing.assert_allclose(float(loss), nll - per_pair.mean().item(), **TOL)
    np.testing.assert_allclose(float(m["orpo/log_odds_ratio"]), mean_ratio.item(), **TOL)
    np.testing.assert_allclose(float(m["orpo/log_odds"]), mean_log_odds.item(), **TOL)


def test_grpo_advantages_match_trl_group_normalisation():
    """TRL's GRPO: (r - group mean) / (nanstd(group) + 1e-4), groups of consecutive rows."""
    rewards = np.random.default_rng(6).normal(size=12)
    grouped = _t(rewards).view(-1, 4)
    want = (grouped - grouped.mean(dim=1, keepdim=True)) / (nanstd(grouped, dim=1)[:, None] + 1e-4)
    got = losses.grpo_advantages(jnp.asarray(rewards), group_size=4)
    np.testing.assert_allclose(np.asarray(got), want.reshape(-1).numpy(), **TOL)
    assert math.isfinite(float(jnp.sum(got)))
