"""The objective registry (`make`, `loss_defaults`) and objectives against NumPy references.

The references compute log-probs from the model's full logits in float64 NumPy, not through
`alignjax.logprobs`, and the losses from the formulas of shared/reference/losses.md.
"""

import functools
import glob
import inspect
import os
import sys

import jax
import numpy as np
import optax
import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from alignjax import models, objectives, steps
from alignjax.objectives import Frozen

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = models.tiny_config("llama", num_layers=1)  # one layer: quicker to compile
TOL = {"rtol": 1e-5, "atol": 1e-6}  # float32 model vs float64 NumPy on its logits

# What each objective asks of the runner: (inputs, head, needs a reference, has a pre-pass).
NEEDS = {
    "sft": ("sft", "lm", False, False),
    "aligner": ("correction", "lm", False, False),
    "rm": ("pair", "scalar", False, False),
    "dpo": ("pair", "lm", True, False),
    "robust_dpo": ("pair", "lm", True, False),
    "ipo": ("pair", "lm", True, False),
    "hinge": ("pair", "lm", True, False),
    "simpo": ("pair", "lm", False, False),
    "orpo": ("pair", "lm", False, True),
    "kto": ("unpaired", "lm", True, True),
    "ppo": ("rollout", "lm", False, False),
    "grpo": ("rollout", "lm", False, False),
    "rloo": ("rollout", "lm", False, False),
    "reinforce": ("rollout", "lm", False, False),
    "value": ("rollout", "scalar", False, False),
}


def _rows(rng, n, length, prompt_max=4):
    ids = rng.integers(3, CFG.vocab_size, (n, length)).astype(np.int32)
    attn = np.ones_like(ids)
    loss = np.zeros_like(ids)
    for i in range(n):
        real = rng.integers(prompt_max + 2, length + 1)  # uneven lengths, right padding
        attn[i, real:] = 0
        ids[i, real:] = 0
        loss[i, rng.integers(1, prompt_max + 1):real] = 1
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}


def _with_prefix(prefix, rows):
    return {prefix + k: v for k, v in rows.items()}


def pair_batch(seed=0, n=4, length=12):
    rng = np.random.default_rng(seed)
    return {**_with_prefix("chosen_", _rows(rng, n, length)),
            **_with_prefix("rejected_", _rows(rng, n, length))}


def unpaired_batch(seed=1, n=8, length=12):
    rng = np.random.default_rng(seed)
    label = rng.permutation(np.arange(n) % 2 == 0)
    return {**_rows(rng, n, length), "label": label,
            **_with_prefix("kl_", _rows(rng, n, length))}


@jax.jit
def _logits(model, ids, attn):
    return model(ids, attn)


def _np_logps(model, batch, prefix="", average=False):
    """Summed (or mean) log-probs of the loss-masked tokens, from the full logits in float64."""
    ids, mask = batch[prefix + "input_ids"], batch[prefix + "loss_mask"]
    logits = np.asarray(_logits(model, ids, batch[prefix + "attention_mask"]), np.float64)[:, :-1]
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
    m = mask[:, 1:].astype(np.float64)
    total = (picked * m).sum(1)
    return total / np.maximum(m.sum(1), 1) if average else total


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@functools.partial(jax.jit, static_argnums=0)
def _loss(objective, model, batch, frozen):
    """`objective.loss` on a whole batch, jitted (eager dispatch is slow)."""
    return objective.loss(model, batch, frozen, jax.random.key(0), objective.count(batch))


@pytest.fixture(scope="module")
def two_models():
    """A policy and a different reference (another seed), so log-ratios are not zero."""
    return models.build(CFG, seed=1), models.build(CFG, seed=0)


# ------------------------------------------------------------------- registry and configs


@pytest.mark.parametrize("name", sorted(objectives.OBJECTIVES))
def test_every_factory_declares_its_keywords_and_needs(name):
    params = inspect.signature(objectives.OBJECTIVES[name]).parameters.values()
    assert all(p.kind is p.KEYWORD_ONLY and p.default is not p.empty for p in params), name
    obj = objectives.make(name, objectives.loss_defaults(name))
    assert (obj.inputs, obj.head, obj.reference is not None, obj.prepare is not None) == (
        NEEDS[name])


def test_make_names_the_bad_config_key():
    with pytest.raises(ValueError, match=r"config\.objective='dpoo': expected one of .*kto"):
        objectives.make("dpoo", {})
    with pytest.raises(ValueError, match=r"config\.loss\.betta: .*'dpo' takes only beta, "
                                         r"label_smoothing"):
        objectives.make("dpo", {"betta": 0.1})
    with pytest.raises(ValueError, match=r"config\.loss\.beta: .*'sft' takes no keywords"):
        objectives.make("sft", {"beta": 0.1})
    for name, key, value in [("robust_dpo", "label_smoothing", 0.5), ("dpo", "beta", 0.0),
                             ("orpo", "nll", "prompt"), ("ipo", "average_logps", "yes"),
                             ("kto", "undesirable_weight", -1.0), ("simpo", "gamma", "1")]:
        with pytest.raises(ValueError, match=rf"config\.loss\.{key}={value!r}: expected"):
            objectives.make(name, {key: value})


def _load_config(arg):
    sys.path.insert(0, REPO)
    try:
        import importlib.util

        file, _, name = arg.partition(":")
        spec = importlib.util.spec_from_file_location("cfg", os.path.join(REPO, file))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod, (mod.get_config(name) if name else mod.get_config())
    finally:
        sys.path.remove(REPO)


def test_every_config_declares_every_loss_keyword():
    dpo_module, _ = _load_config("configs/dpo.py")
    args = [os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
            if not p.endswith(("common.py", "__init__.py"))]
    args += [f"configs/dpo.py:{name}" for name in dpo_module.FAMILY]
    for arg in args:
        _, config = _load_config(arg)
        if "objective" not in config:  # a job without training (configs/sample.py)
            continue
        assert config.loss.to_dict() == objectives.loss_defaults(config.objective), arg
    assert set(dpo_module.FAMILY) == (set(objectives.OBJECTIVES) - {"sft", "aligner", "rm"}
                                      - set(objectives.RL_OBJECTIVES))
    with pytest.raises(ValueError, match=r"configs/dpo\.py:dpoo: expected one of"):
        _load_config("configs/dpo.py:dpoo")


def _parse(*argv):
    """The entry point's config flag (locked) on a fresh flag set, parsed from `argv`."""
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                    sys_argv=["main", *argv])
    sys.path.insert(0, REPO)
    try:
        fv(["main", *argv])
    finally:
        sys.path.remove(REPO)
    return fv.config


def test_loss_keywords_are_set_and_checked_by_the_config_flags():
    dpo = os.path.join(REPO, "configs", "dpo.py")
    config = _parse(f"--config={dpo}:robust_dpo", "--config.loss.label_smoothing=0.2")
    assert config.loss.to_dict() == {"beta": 0.1, "label_smoothing": 0.2}
    objectives.make(config.objective, config.loss.to_dict())
    config = _parse(f"--config={dpo}:simpo", "--config.loss.gamma=1.5", "--config.loss.beta=2")
    assert (config.loss.gamma, config.loss.beta) == (1.5, 2.0)
    assert _parse(f"--config={dpo}:ipo", "--config.loss.average_logps=true").loss.average_logps
    assert _parse(f"--config={dpo}:orpo", "--config.loss.nll=completion").loss.nll == "completion"
    # ml_collections raises AttributeError ("Did you mean beta?"); absl prints it and exits.
    with pytest.raises((AttributeError, KeyError, flags.Error), match="betta"):
        _parse(f"--config={dpo}", "--config.loss.betta=0.2")
    with pytest.raises((AttributeError, KeyError, flags.Error), match="label_smoothing"):
        _parse(f"--config={dpo}:hinge", "--config.loss.label_smoothing=0.1")


# ------------------------------------------------------------------- numerics


def test_ipo_summed_and_length_normalised_forms(two_models):
    policy, ref = two_models
    batch = pair_batch()
    beta = 0.2
    rho = {s: _np_logps(policy, batch, f"{s}_") - _np_logps(ref, batch, f"{s}_")
           for s in ("chosen", "rejected")}
    lengths = {s: batch[f"{s}_loss_mask"][:, 1:].sum(1) for s in ("chosen", "rejected")}
    expected = {  # IPO paper / DPO reference code: summed; TRL: each log-ratio over its length
        False: np.mean((rho["chosen"] - rho["rejected"] - 1 / (2 * beta)) ** 2),
        True: np.mean((rho["chosen"] / lengths["chosen"] - rho["rejected"] / lengths["rejected"]
                       - 1 / (2 * beta)) ** 2),
    }
    assert abs(expected[True] - expected[False]) > 0.1
    frozen = Frozen(*nnx.split(ref))
    for average, want in expected.items():
        obj = objectives.make("ipo", {"beta": beta, "average_logps": average})
        loss, _ = _loss(obj, policy, batch, frozen)
        np.testing.assert_allclose(float(loss), want, **TOL, err_msg=f"average_logps={average}")


def _z_tol(policy, ref, batch) -> dict[str, float]:
    """The tolerance of KTO's reference point z = mean_i max(S_i(policy) - S_i(ref), 0), where
    S_i is a float32 sum of log-probs: each S_i carries float32 rounding of about eps * |S_i|
    (|S_i| ~ 100 here, eps * |S_i| ~ 1e-5, against z ~ 0.04), so z's absolute error is bounded
    by the sums' size, not by TOL's 1e-6 (which held on one CPU and not on another)."""
    size = max(np.abs(_np_logps(m, batch, "kl_")).max() for m in (policy, ref))
    return {"rtol": 0.0, "atol": 2 * float(np.finfo(np.float32).eps) * float(size)}


def _trl_kto(policy, ref, batch, beta, desirable_weight, undesirable_weight):
    """TRL KTOTrainer's loss (shared/reference/losses.md, KTO) on NumPy log-probs."""
    kl = max(float(np.mean(_np_logps(policy, batch, "kl_") - _np_logps(ref, batch, "kl_"))), 0.0)
    logratios = _np_logps(policy, batch) - _np_logps(ref, batch)
    chosen, rejected = logratios[batch["label"]], logratios[~batch["label"]]
    losses_ = np.concatenate([desirable_weight * (1 - _sigmoid(beta * (chosen - kl))),
                              undesirable_weight * (1 - _sigmoid(beta * (kl - rejected)))])
    return np.mean(losses_), kl, np.mean(beta * chosen), np.mean(beta * rejected)


def _kto_steps(policy, batch, frozen, micro_batches, kw):
    graphdef, params = nnx.split(policy)
    obj = objectives.make("kto", kw)
    tx = optax.sgd(1.0)
    step = jax.jit(functools.partial(steps.train_step, graphdef=graphdef, objective=obj, tx=tx,
                                     micro_batches=micro_batches))
    state, metrics = step(steps.init_state(params, tx, 0), batch, frozen)
    return jax.device_get(state.params), jax.device_get(metrics)


def test_kto_matches_trl_over_the_whole_batch_at_1_2_4_micro_batches(two_models):
    """The train step's KTO loss and metrics are TRL's formula on the whole batch, and 1, 2 and
    4 micro-batches give the same loss, metrics and update: z is not estimated per slice."""
    policy, ref = two_models
    batch = unpaired_batch()
    kw = {"beta": 0.3, "desirable_weight": 1.0, "undesirable_weight": 1.5}
    want, z, chosen_reward, rejected_reward = _trl_kto(policy, ref, batch, **kw)
    assert z > 0.02  # the reference point is not clamped away
    # The check can fail: slices whose mean is clamped at 0 would move the reference point.
    kl_B = _np_logps(policy, batch, "kl_") - _np_logps(ref, batch, "kl_")
    for k in (2, 4):
        assert np.mean(np.maximum(kl_B.reshape(k, -1).mean(1), 0.0)) - z > 0.05, k
    frozen = Frozen(*nnx.split(ref))
    cached = {**batch, **jax.device_get(nnx.jit(objectives.make("kto", kw).reference)(ref, batch))}
    one_params, one = _kto_steps(policy, batch, frozen, 1, kw)
    np.testing.assert_allclose(one["train/loss"], want, **TOL)
    np.testing.assert_allclose(one["kto/reference_point"], z, **_z_tol(policy, ref, batch))
    np.testing.assert_allclose(one["kto/chosen_reward"], chosen_reward, **TOL)
    np.testing.assert_allclose(one["kto/rejected_reward"], rejected_reward, **TOL)
    # The live reference model and the cached reference quantities take the same path.
    runs = {"2, cached": _kto_steps(policy, cached, None, 2, kw),
            "4, live": _kto_steps(policy, batch, frozen, 4, kw)}
    for name, (params, metrics) in runs.items():
        assert set(metrics) == set(one), name
        for key in one:
            np.testing.assert_allclose(metrics[key], one[key], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name}: {key}")
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(one_params)):
            np.testing.assert_allclose(a, b, atol=1e-6, err_msg=name)


def test_kto_on_a_whole_batch_computes_its_reference_point(two_models):
    """Evaluation calls the loss without the pre-pass: z then comes from the batch it sees."""
    policy, ref = two_models
    batch = unpaired_batch()
    kw = {"beta": 0.3, "desirable_weight": 1.0, "undesirable_weight": 1.5}
    loss, metrics = _loss(objectives.make("kto", kw), policy, batch, Frozen(*nnx.split(ref)))
    want, z, _, _ = _trl_kto(policy, ref, batch, **kw)
    np.testing.assert_allclose(float(loss), want, **TOL)
    np.testing.assert_allclose(float(metrics["kto/reference_point"]), z,
                               **_z_tol(policy, ref, batch))
    with pytest.raises(ValueError, match=r"reference model or cached .*config\.ref_cache"):
        _loss(objectives.make("kto", kw), policy, batch, None)


@functools.partial(jax.jit, static_argnums=0)
def _loss_part(objective, model, batch, total):
    """`objective.loss` on a slice of a batch whose normaliser is `total`."""
    return objective.loss(model, batch, None, jax.random.key(0), total)


def test_orpo_matches_trl_and_its_nll_accumulates_exactly(two_models):
    """TRL's ORPOTrainer: NLL over the chosen prompt + response (pad masked) - mean beta log
    sigma(log odds) of the completion-averaged log-probs; "completion" keeps the per-pair form."""
    torch = pytest.importorskip("torch")
    from test_losses_trl import CPO_ATTRS, ORPOTrainer, _call_trl_method

    policy, _ = two_models
    batch, beta = pair_batch(), 0.1

    def logits(prefix):
        return torch.from_numpy(np.asarray(_logits(policy, batch[prefix + "input_ids"],
                                                   batch[prefix + "attention_mask"]), np.float64))

    def labels(prefix, mask):
        ids = torch.from_numpy(batch[prefix + "input_ids"]).long()
        return torch.where(torch.from_numpy(batch[prefix + mask]) == 1, ids, -100)

    # concatenated_forward: cross_entropy_loss(chosen logits, input ids where attention == 1)
    chosen_logits = logits("chosen_")
    nll = torch.nn.CrossEntropyLoss()(chosen_logits[:, :-1].reshape(-1, CFG.vocab_size),
                                      labels("chosen_", "attention_mask")[:, 1:].reshape(-1))
    pc, pr = (ORPOTrainer.get_batch_logps(lg, labels(p, "loss_mask"), average_log_prob=True)
              for lg, p in ((chosen_logits, "chosen_"), (logits("rejected_"), "rejected_")))
    per_pair = _call_trl_method(ORPOTrainer, "odds_ratio_loss", CPO_ATTRS, {"beta": beta}, pc,
                                pr)[0]
    nlls = {"full": nll.item(), "completion": -pc.mean().item()}
    assert abs(nlls["full"] - nlls["completion"]) > 1e-3  # far above the tolerance
    for form, want_nll in nlls.items():
        obj = objectives.make("orpo", {"beta": beta, "nll": form})
        loss, metrics = _loss(obj, policy, batch, None)
        np.testing.assert_allclose(float(loss), want_nll - per_pair.mean().item(), **TOL,
                                   err_msg=form)
        np.testing.assert_allclose(float(metrics["orpo/nll"]), want_nll, **TOL, err_msg=form)
    # "full" over two micro-batches of uneven token counts, after the whole-batch pre-pass.
    obj = objectives.make("orpo", {"beta": beta})
    whole_loss, whole = _loss(obj, policy, batch, None)
    prepared = {**batch, **obj.prepare(policy, batch, None)}
    halves = [_loss_part(obj, policy, jax.tree.map(lambda x, i=i: x[2 * i:2 * i + 2], prepared),
                         obj.count(batch)) for i in range(2)]
    counts = [batch["chosen_attention_mask"][2 * i:2 * i + 2, 1:].sum() for i in range(2)]
    assert counts[0] != counts[1]
    np.testing.assert_allclose(float(sum(h[0] for h in halves)), float(whole_loss), **TOL)
    np.testing.assert_allclose(float(whole["orpo/nll"]), nll.item(), **TOL)
    merged_nll = np.mean([float(h[1]["orpo/nll"]) for h in halves])  # as merge_metrics
    np.testing.assert_allclose(merged_nll, nll.item(), **TOL)


# ------------------------------------------------------------------- a loss in one file


def test_a_loss_defined_in_a_config_file_is_an_objective():
    """configs/dpop.py defines DPOP and names it "configs.dpop:dpop": its loss matches the
    formula in float64, lam = 0 gives DPO's loss and gradients, and its keys are checked."""
    sys.path.insert(0, REPO)
    try:
        from configs import dpop as dpop_config
    finally:
        sys.path.remove(REPO)
    rng = np.random.default_rng(0)
    logps = [rng.normal(-20.0, 3.0, 16).astype(np.float32) for _ in range(4)]
    beta, lam = 0.1, 5.0
    loss, metrics = dpop_config.dpop_loss(*logps, beta=beta, lam=lam)
    pw, pl, rw, rl = (x.astype(np.float64) for x in logps)
    z = beta * ((pw - rw) - (pl - rl) - lam * np.maximum(0.0, rw - pw))
    assert (pw < rw).any() and (pw > rw).any()  # the penalty is on for some rows only
    np.testing.assert_allclose(float(loss), np.mean(np.logaddexp(0.0, -z)), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["dpop/penalty"]), np.mean(np.maximum(0, rw - pw)),
                               rtol=1e-6)

    def value(fn, **kw):
        return jax.value_and_grad(lambda a, b: fn(a, b, *logps[2:], **kw)[0], argnums=(0, 1))(
            *logps[:2])

    (l0, g0), (l1, g1) = value(dpop_config.dpop_loss, beta=beta, lam=0.0), value(
        objectives.losses.dpo_loss, beta=beta)
    np.testing.assert_allclose(float(l0), float(l1), rtol=1e-6)
    for a, b in zip(g0, g1, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-8)

    name = "configs.dpop:dpop"
    assert objectives.loss_defaults(name) == {"beta": 0.1, "lam": 50.0}
    obj = objectives.make(name, {"lam": 1.0})
    assert (obj.inputs, obj.head, obj.reference is not None) == ("pair", "lm", True)
    with pytest.raises(ValueError, match=r"config\.loss\.lam=-1\.0: expected"):
        objectives.make(name, {"lam": -1.0})
    with pytest.raises(ValueError, match=r"config\.objective='configs\.nope:dpop': cannot"):
        objectives.make("configs.nope:dpop", {})
    config = _parse(f"--config={os.path.join(REPO, 'configs', 'dpop.py')}",
                    "--config.loss.lam=10")
    assert (config.objective, config.loss.lam, config.loss.beta) == (name, 10.0, 0.1)
