"""The generic train step with every objective, on a tiny random model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from alignjax import models, objectives, steps
from alignjax.objectives import Frozen

CFG = models.tiny_config("llama")


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


def sft_batch(seed=0, n=4, length=12):
    return _rows(np.random.default_rng(seed), n, length)


def pair_batch(seed=0, n=4, length=12):
    rng = np.random.default_rng(seed)
    c, r = _rows(rng, n, length), _rows(rng, n, length - 2)
    return {**{"chosen_" + k: v for k, v in c.items()},
            **{"rejected_" + k: v for k, v in r.items()}}


def cached_reference_pair_batch(seed=0, n=4):
    """Pairs with cached reference log-probs away from the policy's, so that no implicit reward
    sits at an exact tie (where an accuracy flips on rounding)."""
    rng = np.random.default_rng(seed + 100)
    return {**pair_batch(seed, n), "ref_chosen_logps": rng.normal(-40, 5, n).astype(np.float32),
            "ref_rejected_logps": rng.normal(-40, 5, n).astype(np.float32)}


def _setup(head="lm", sgd=False, lr=1e-2):
    model = models.build(CFG, head=head)
    graphdef, params = nnx.split(model)
    # Plain SGD (lr 1) shows gradients as they are; Adam's first step is sign(g), which amplifies
    # float rounding on near-zero gradients.
    tx = optax.sgd(1.0) if sgd else steps.optimizer(learning_rate=lr, warmup_steps=0,
                                                    total_steps=10, schedule="constant")
    state = steps.init_state(params, tx, seed=0)
    frozen = Frozen(graphdef, jax.tree.map(jnp.copy, params)) if head == "lm" else None
    return graphdef, tx, state, frozen


def _run(objective_name, batch, micro_batches=1, head="lm", n_steps=1, sgd=False, lr=1e-2,
         **kw):
    obj = objectives.make(objective_name, kw)
    graphdef, tx, state, frozen = _setup(head, sgd, lr)
    step = jax.jit(lambda s, b, f: steps.train_step(s, b, f, graphdef=graphdef, objective=obj,
                                                    tx=tx, micro_batches=micro_batches))
    history = []
    for _ in range(n_steps):
        state, metrics = step(state, batch, frozen)
        history.append(jax.device_get(metrics))
    return state, history


def test_sft_loss_decreases():
    _, hist = _run("sft", sft_batch(), n_steps=8)
    losses = [h["train/loss"] for h in hist]
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("name,batch_fn,head,kw", [
    ("sft", sft_batch, "lm", {}),
    ("aligner", sft_batch, "lm", {}),
    ("rm", pair_batch, "scalar", {}),
    ("dpo", pair_batch, "lm", {"beta": 0.1}),
])
def test_gradient_accumulation_is_exact(name, batch_fn, head, kw):
    """Two micro-batches with uneven token counts give the same update as one batch."""
    one, h1 = _run(name, batch_fn(), 1, head, sgd=True, **kw)
    two, h2 = _run(name, batch_fn(), 2, head, sgd=True, **kw)
    np.testing.assert_allclose(h1[0]["train/loss"], h2[0]["train/loss"], rtol=1e-5)
    np.testing.assert_allclose(h1[0]["train/grad_norm"], h2[0]["train/grad_norm"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize("name,batch_fn,head,kw", [
    ("sft", sft_batch, "lm", {}),
    pytest.param("aligner", sft_batch, "lm", {}, marks=pytest.mark.slow),
    ("rm", pair_batch, "scalar", {}),
    ("dpo", lambda n: cached_reference_pair_batch(n=n), "lm", {"beta": 0.1}),
    pytest.param("simpo", pair_batch, "lm", {"beta": 2.0, "gamma": 0.5},
                 marks=pytest.mark.slow),
    ("orpo", pair_batch, "lm", {"beta": 0.1}),
])
def test_every_metric_is_the_same_for_1_2_and_4_micro_batches(name, batch_fn, head, kw):
    """Not only the loss: every reported metric is the whole batch's, however it is split."""
    batch = batch_fn(n=8)
    runs = {k: _run(name, batch, k, head, sgd=True, **kw)[1][0] for k in (1, 2, 4)}
    assert set(runs[1]) == set(runs[2]) == set(runs[4])
    for k in (2, 4):
        for key, value in runs[1].items():
            np.testing.assert_allclose(runs[k][key], value, rtol=2e-5, atol=1e-7,
                                       err_msg=f"{key} with {k} micro-batches")
    loss_key = {"aligner": "sft/loss", "rm": "rm/loss"}.get(name, f"{name}/loss")
    np.testing.assert_allclose(runs[4][loss_key], runs[1]["train/loss"], rtol=2e-5)


def test_dpo_starts_at_log2_and_cached_reference_is_identical():
    batch = pair_batch()
    _, live = _run("dpo", batch, beta=0.1)
    np.testing.assert_allclose(live[0]["train/loss"], np.log(2.0), rtol=1e-6)
    model = models.build(CFG)
    ref_c, ref_r = objectives.pair_logps(model, jax.tree.map(jnp.asarray, batch))
    cached = {**batch, "ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r}
    _, hist = _run("dpo", cached, beta=0.1)
    for key in ("train/loss", "train/grad_norm", "dpo/margin"):
        np.testing.assert_allclose(hist[0][key], live[0][key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name,kw", [
    ("robust_dpo", {"beta": 0.1, "label_smoothing": 0.1}),
    ("ipo", {"beta": 0.1}),
    ("hinge", {"beta": 0.1}),
    ("simpo", {"beta": 2.0, "gamma": 0.5}),
    ("orpo", {"beta": 0.1}),
])
def test_every_preference_loss_trains(name, kw):
    _, hist = _run(name, pair_batch(), n_steps=3, lr=1e-3, **kw)
    assert all(np.isfinite(h["train/loss"]) for h in hist)
    assert hist[-1]["train/loss"] < hist[0]["train/loss"]


def test_reward_model_learns_the_preference():
    batch = pair_batch()
    _, hist = _run("rm", batch, head="scalar", n_steps=10)
    # the first step's accuracy is that of the initial model, scored here directly
    rm = models.build(CFG, head="scalar")
    scores = [np.asarray(models.last_token_values(
        rm(jnp.asarray(batch[f"{side}_input_ids"]), jnp.asarray(batch[f"{side}_attention_mask"])),
        jnp.asarray(batch[f"{side}_attention_mask"]))) for side in ("chosen", "rejected")]
    initial = float(np.mean(scores[0] > scores[1]))
    assert initial < 1.0
    np.testing.assert_allclose(hist[0]["rm/accuracy"], initial)
    assert hist[-1]["rm/accuracy"] == 1.0
    assert hist[-1]["train/loss"] < hist[0]["train/loss"]


def test_unknown_objective_names_the_config_key():
    with pytest.raises(ValueError, match="config.objective='dpoo'"):
        objectives.make("dpoo", {})
