"""RL rollouts on tiny random models: where the score lands, the value shift through the real
critic, and the KL in the reward or in the loss against NumPy float64 references."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from alignjax import models, objectives, sharding
from alignjax.rl import loop
from alignjax.rl.rollout import (
    Forwards,
    RewardModel,
    assemble,
    last_response_index,
    score_tokens,
)
from alignjax.sampler import GREEDY, make_sampler

CFG = models.tiny_config("llama")  # vocab 256, pad 0, eos 2
EOS = PAD = 2  # pad equal to EOS, as in SmolLM2's tokenizer
STOP = 7  # a custom stop token
MESH = sharding.make_mesh()


def _pitfall_batch():
    """[prompt | response] rows as the sampler lays them out (left-padded prompts of P = 5,
    responses of T = 5 padded on the right), with pad == EOS == 2 everywhere:

      row 0: response ends with EOS, then pads (which are EOS ids too)
      row 1: the prompt holds an EOS; the response is cut at T without any EOS
      row 2: left padding (EOS ids) before the prompt; the response ends with the custom stop
      row 3: a one-token response: EOS alone
    """
    p = PAD
    ids = np.array([
        [p, 11, 12, 13, 14, 21, 22, 23, EOS, p],
        [11, EOS, 12, 13, 14, 21, 22, 23, 24, 25],
        [p, p, p, 11, 12, 21, 22, STOP, p, p],
        [p, p, 11, 12, 13, EOS, p, p, p, p],
    ], np.int32)
    attention = np.array([
        [0, 1, 1, 1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0, 0, 0],
    ], np.int32)
    response = attention.copy()
    response[:, :5] = 0
    eos = np.array([True, False, True, True])
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": response}, eos


LAST = np.array([8, 9, 7, 5])  # the last real response token of each row


def _config(**kw):
    c = ml_collections.ConfigDict({
        "loss": {"kl_estimator": kw.pop("estimator", "k1")},
        "kl": {"placement": kw.pop("placement", "reward"), "coef": 0.1, "target": 0.0,
               "horizon": 10000.0},
        "gae": {"gamma": kw.pop("gamma", 1.0), "lam": kw.pop("lam", 0.95)},
        "whiten_advantages": False, "samples_per_prompt": 2, "scale_rewards": True,
        "max_new_tokens": 5, "baseline_decay": 0.9})
    c.update(kw)
    return c


def test_last_real_token_from_the_mask_not_from_the_pad_id():
    batch, _ = _pitfall_batch()
    np.testing.assert_array_equal(last_response_index(batch["loss_mask"]), LAST)
    # The search of the peers' bug reports (the first pad id of the response, minus one)
    # misses the EOS of rows 0 and 3: with pad == EOS it takes the EOS for padding.
    is_pad = batch["input_ids"][:, 5:] == PAD
    naive = 5 + np.where(is_pad.any(1), is_pad.argmax(1), is_pad.shape[1]) - 1
    assert list(naive != LAST) == [True, False, False, True]
    scores = np.array([0.5, -1.0, 2.0, 3.0], np.float32)
    placed = score_tokens(scores, batch["loss_mask"])
    expected = np.zeros(batch["input_ids"].shape, np.float32)
    expected[np.arange(4), LAST] = scores
    np.testing.assert_array_equal(placed, expected)
    assert np.all(last_response_index(np.zeros((2, 4))) == -1)


def _forward(graphdef):
    """`model(ids, mask)` of models of `graphdef`, compiled once (eager NNX runs op by op)."""
    fn = jax.jit(lambda p, ids, mask: nnx.merge(graphdef, p)(ids, mask))
    return lambda params, ids, mask=None: np.asarray(fn(params, jnp.asarray(ids), jnp.asarray(
        np.ones_like(ids) if mask is None else mask)), np.float64)


def _token_logps64(logits, batch):
    """log pi(token t) from the logits at t - 1, in float64, 0 off the response."""
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    ids = batch["input_ids"]
    out = np.zeros(ids.shape)
    out[:, 1:] = np.take_along_axis(logp[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]
    return out * batch["loss_mask"]


@pytest.fixture(scope="module")
def world():
    """One rollout of the pitfall batch: a policy (seed 1) that differs from its reference
    (seed 0), a critic, and a reward model that scores it."""
    batch, eos = _pitfall_batch()
    graphdef, params = nnx.split(models.build(CFG, seed=1))
    ref_params = nnx.split(models.build(CFG, seed=0))[1]
    critic_graphdef, critic_params = nnx.split(models.build(CFG, head="scalar", seed=3))
    rm = models.build(CFG, head="scalar", seed=5)
    scores = RewardModel(rm, MESH)(batch)
    ro = assemble(Forwards(graphdef, MESH, critic_graphdef), params, ref_params, batch, eos,
                  scores, critic_params=critic_params, no_eos_penalty=0.25)
    lm, scalar = _forward(graphdef), _forward(critic_graphdef)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = lm(params, ids, mask)
    log_ratio = _token_logps64(logits, batch) - _token_logps64(lm(ref_params, ids, mask), batch)
    return {"batch": batch, "ro": ro, "scores": scores, "graphdef": graphdef, "params": params,
            "rm": lambda i: scalar(nnx.split(rm)[1], i), "logits": logits,
            "critic": scalar(critic_params, ids, mask), "log_ratio": log_ratio}


def test_rollout_log_probs_and_entropy_match_numpy(world):
    """The rollout's old log-probs and its entropy (of the distribution each token was drawn
    from, at position t - 1) against float64 NumPy on the full logits."""
    ro, batch, logits = world["ro"], world["batch"], world["logits"]
    mask = batch["loss_mask"]
    np.testing.assert_allclose(ro.logps, _token_logps64(logits, batch), rtol=1e-5, atol=1e-5)
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    entropy = np.zeros(mask.shape)
    entropy[:, 1:] = -(np.exp(logp) * logp).sum(-1)[:, :-1]
    np.testing.assert_allclose(ro.entropy, entropy * mask, rtol=1e-5, atol=1e-5)


def test_score_and_reward_model_read_the_last_real_token_in_a_real_rollout(world):
    batch, ro, scores = world["batch"], world["ro"], world["scores"]
    for b in range(4):  # the reward model on the sequence cut after its last real token
        keep = np.flatnonzero(batch["attention_mask"][b, :LAST[b] + 1])
        alone = world["rm"](batch["input_ids"][b:b + 1, keep])
        np.testing.assert_allclose(scores[b], alone[0, -1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ro.scores, scores - np.array([0, 0.25, 0, 0]), rtol=1e-6)
    fields = loop.ppo_estimate(ro, {"kl_coef": 0.0}, _config())
    # without the KL term the per-token reward is the score on the last real token only
    np.testing.assert_allclose(fields["rewards"], score_tokens(ro.scores, batch["loss_mask"]),
                               atol=1e-7)


def test_sampler_rows_that_stop_with_a_pad_equal_stop_token():
    """The real sampler's layout, with pad == stop token and the stop token in the prompt."""
    graphdef, params = nnx.split(models.build(CFG, seed=2))
    prompt = [5, 9, 17, 3]
    free = make_sampler(graphdef, CFG, max_new_tokens=4, prompt_buckets=(6,),
                        stop_token_ids=(), pad_token_id=PAD)
    tokens = [int(t) for t in np.asarray(free(params, [prompt], 0, GREEDY).tokens_BT[0])]
    s = next(i for i in range(1, 4) if tokens[i] not in tokens[:i])  # a first occurrence
    stop = tokens[s]
    stopping = make_sampler(graphdef, CFG, max_new_tokens=4, prompt_buckets=(6,),
                            stop_token_ids=(stop,), pad_token_id=stop)
    out = stopping(params, [prompt, [stop, *prompt[1:]]], 0, GREEDY)  # EOS inside a prompt
    batch = {k: np.asarray(v) for k, v in out.batch().items()}
    assert np.all(batch["input_ids"][0, 6 + s:] == stop)  # pads are stop ids
    assert last_response_index(batch["loss_mask"])[0] == 6 + s
    assert np.asarray(out.finish_reason_B)[0] == 0


def _gae64(rewards, values, mask, gamma, lam):
    adv = np.zeros_like(rewards)
    for b in range(len(rewards)):
        span = np.flatnonzero(mask[b])
        nxt = 0.0
        for i in reversed(range(len(span))):
            t = span[i]
            v_next = values[b, span[i + 1]] if i + 1 < len(span) else 0.0
            delta = rewards[b, t] + gamma * v_next - values[b, t]
            nxt = delta + gamma * lam * nxt
            adv[b, t] = nxt
    return adv, (adv + values) * mask


def test_gae_through_the_real_critic_outputs(world):
    batch, ro, raw = world["batch"], world["ro"], world["critic"]
    mask = batch["loss_mask"]
    # V of the state before token t is the head's output at position t - 1
    values = np.zeros(mask.shape)
    values[:, 1:] = raw[:, :-1]
    values *= mask
    np.testing.assert_allclose(ro.values, values, rtol=1e-5, atol=1e-6)
    rewards = np.zeros(mask.shape)
    rewards[np.arange(4), LAST] = ro.scores
    fields = loop.ppo_estimate(ro, {"kl_coef": 0.0}, _config(gamma=0.9, lam=0.8))
    adv, ret = _gae64(rewards, values, mask, 0.9, 0.8)
    np.testing.assert_allclose(fields["advantages"], adv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fields["value_targets"], ret, rtol=1e-5, atol=1e-6)
    # row 3 (one token): A = score - V(prompt), by hand
    np.testing.assert_allclose(fields["advantages"][3, 5], ro.scores[3] - raw[3, 4], rtol=1e-5)


def _k64(lr, estimator):
    return {"k1": lr, "k2": 0.5 * lr**2, "k3": np.expm1(-lr) + lr}[estimator]


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_in_the_reward_matches_numpy(world, estimator):
    ro, lr, batch = world["ro"], world["log_ratio"], world["batch"]
    mask = batch["loss_mask"]
    assert np.abs(lr[mask != 0]).min() > 1e-3  # the policy is not its reference
    config = _config(estimator=estimator, gamma=1.0, lam=0.95)
    fields = loop.ppo_estimate(ro, {"kl_coef": 0.1}, config)
    rewards = -0.1 * _k64(lr, estimator) * mask
    rewards[np.arange(4), LAST] += ro.scores
    np.testing.assert_allclose(fields["rewards"], rewards, rtol=1e-4, atol=1e-5)
    adv, _ = _gae64(rewards, ro.values.astype(np.float64), mask, 1.0, 0.95)
    np.testing.assert_allclose(fields["advantages"], adv, rtol=1e-4, atol=1e-5)
    # sequence algorithms: R = score - beta * sum_t KL_t
    rloo = loop.rloo_estimate(ro, {"kl_coef": 0.1}, config)
    returns = ro.scores - 0.1 * (_k64(lr, estimator) * mask).sum(axis=1)
    np.testing.assert_allclose(rloo["returns"], returns, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rloo["baseline"], returns.reshape(2, 2)[:, ::-1].reshape(-1),
                               rtol=1e-4, atol=1e-5)
    # the loss placement keeps the KL out of the reward
    no_kl = loop.ppo_estimate(ro, {"kl_coef": 0.1}, _config(estimator=estimator,
                                                             placement="loss"))
    np.testing.assert_allclose(no_kl["rewards"], score_tokens(ro.scores, mask), atol=1e-7)


@pytest.mark.parametrize("name,loss_config", [
    ("ppo", {"kl_estimator": "k3"}),
    ("grpo", {"aggregation": "sequence", "kl_estimator": "k3"}),
    ("grpo", {"aggregation": "token", "kl_estimator": "k2"}),
    ("grpo", {"aggregation": "unnormalized", "kl_estimator": "k1"}),
])
def test_kl_in_the_loss_matches_numpy(world, name, loss_config):
    ro, lr, batch = world["ro"], world["log_ratio"], world["batch"]
    mask = batch["loss_mask"].astype(np.float64)
    beta = 0.1
    config = _config(estimator=loss_config["kl_estimator"], placement="loss")
    fields = (loop.ppo_estimate if name == "ppo" else loop.grpo_estimate)(
        ro, {"kl_coef": beta}, config)
    full = loop._batch(ro, fields, {"kl_coef": beta}, config)
    assert np.all(full["kl_coef"] == np.float32(beta))
    obj = objectives.make(name, loss_config)
    dev = {k: jnp.asarray(v) for k, v in full.items()}
    graphdef = world["graphdef"]
    loss = jax.jit(lambda p, b: obj.loss(nnx.merge(graphdef, p), b, None, jax.random.key(0),
                                         obj.count(b)))
    value, metrics = loss(world["params"], dev)
    # at the rollout policy the ratio is 1: the surrogate is -A, plus beta * k(log-ratio)
    per_token = -full["advantages"].astype(np.float64) + beta * _k64(
        lr, loss_config["kl_estimator"])
    aggregation = loss_config.get("aggregation", "token")
    if aggregation == "sequence":
        expected = np.mean((per_token * mask).sum(1) / mask.sum(1))
    elif aggregation == "token":
        expected = (per_token * mask).sum() / mask.sum()
    else:
        expected = (per_token * mask).sum() / (len(mask) * config.max_new_tokens)
    np.testing.assert_allclose(float(value), expected, rtol=1e-4, atol=1e-6)
    assert float(metrics["ppo/clipfrac"]) == 0.0
    np.testing.assert_allclose(float(metrics["ppo/ratio"]), 1.0, atol=1e-5)


@pytest.mark.slow  # two gradient compilations, about 20 s
def test_gspo_sequence_ratio_gradient_is_the_mean_token_score(world):
    """GSPO at ratio 1: the gradient is -(1/B) sum_i A_i mean_t grad log pi(y_it), which is
    GRPO's with sequence means."""
    ro, graphdef = world["ro"], world["graphdef"]
    config = _config(placement="loss")
    fields = loop.grpo_estimate(ro, {"kl_coef": 0.0}, config)
    full = {k: jnp.asarray(v) for k, v in loop._batch(ro, fields, {"kl_coef": 0.0},
                                                      config).items()}

    def grad_of(obj):
        return jax.jit(jax.grad(lambda p: obj.loss(nnx.merge(graphdef, p), full, None,
                                                   jax.random.key(0), obj.count(full))[0]))

    g_seq = grad_of(objectives.make("grpo", {"importance": "sequence", "clip_eps": 3e-4}))(
        world["params"])
    g_tok = grad_of(objectives.make("grpo", {}))(world["params"])
    for a, b in zip(jax.tree.leaves(g_seq), jax.tree.leaves(g_tok), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
    assert max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g_seq)) > 1e-4
    with pytest.raises(ValueError, match=r"config\.loss\.importance='sequence'"):
        objectives.make("grpo", {"importance": "sequence", "aggregation": "token"})
