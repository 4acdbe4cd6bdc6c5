"""Every loss against a float64 NumPy reference written from shared/reference/losses.md.

Inputs are random, with prompt masks, uneven completion lengths and padding. The references use
explicit Python loops over tokens and examples (no shared code with alignjax); the JAX side runs
in float64 (`jax.enable_x64`) and must agree to 1e-6.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax import logprobs as lp
from alignjax import losses

TOL = {"rtol": 1e-6, "atol": 1e-6}


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _close(got, want):
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), **TOL)


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sigmoid(x):
    return math.exp(log_sigmoid(x))


def _token_batch(seed, batch, length, empty_row=False):
    """Token log-probs (col 0 = 0) and masks: prompt, completion of uneven length, padding."""
    rng = np.random.default_rng(seed)
    logps = -rng.gamma(1.0, 1.5, size=(batch, length))
    logps[:, 0] = 0.0
    mask = np.zeros((batch, length))
    for b in range(batch):
        prompt = int(rng.integers(1, length // 2))
        n = int(rng.integers(1, length - prompt + 1))
        mask[b, prompt : prompt + n] = 1.0
    if empty_row:
        mask[-1] = 0.0
    return logps, mask


def _np_seq(logps, mask, average=False):
    out = []
    for b in range(logps.shape[0]):
        total, n = 0.0, 0
        for t in range(1, logps.shape[1]):
            if mask[b, t]:
                total += logps[b, t]
                n += 1
        out.append(total / max(n, 1) if average else total)
    return np.array(out)


def _pairs(seed, batch=6, length=13, average=False):
    """Policy/reference sequence log-probs of chosen and rejected, from token-level inputs."""
    keys = ("pc", "pr", "rc", "rr")
    tokens = {k: _token_batch(seed + i, batch, length) for i, k in enumerate(keys)}
    # Reference and policy score the same completion: same mask.
    tokens["rc"] = (tokens["rc"][0], tokens["pc"][1])
    tokens["rr"] = (tokens["rr"][0], tokens["pr"][1])
    jax_seq = {
        k: lp.sequence_logprobs(jnp.asarray(x), jnp.asarray(m), average=average)
        for k, (x, m) in tokens.items()
    }
    np_seq = {k: _np_seq(x, m, average) for k, (x, m) in tokens.items()}
    np_seq["len_c"] = np.array([tokens["pc"][1][b, 1:].sum() for b in range(batch)])
    np_seq["len_r"] = np.array([tokens["pr"][1][b, 1:].sum() for b in range(batch)])
    jax_seq["len_c"] = lp.sequence_lengths(jnp.asarray(tokens["pc"][1]))
    jax_seq["len_r"] = lp.sequence_lengths(jnp.asarray(tokens["pr"][1]))
    return jax_seq, np_seq


# ---------------------------------------------------------------- DPO family (summed S(y))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
def test_dpo_and_cdpo(label_smoothing):
    beta, eps = 0.3, label_smoothing
    j, n = _pairs(0)
    loss, m = losses.dpo_loss(j["pc"], j["pr"], j["rc"], j["rr"], beta=beta, label_smoothing=eps)
    per, acc, margin = [], [], []
    for b in range(6):
        rw, rl = n["pc"][b] - n["rc"][b], n["pr"][b] - n["rr"][b]
        d = beta * (rw - rl)
        per.append(-(1 - eps) * log_sigmoid(d) - eps * log_sigmoid(-d))
        acc.append(float(beta * rw > beta * rl))
        margin.append(beta * rw - beta * rl)
    _close(loss, np.mean(per))
    _close(m["dpo/accuracy"], np.mean(acc))
    _close(m["dpo/margin"], np.mean(margin))
    _close(m["dpo/chosen_reward"], np.mean(beta * (n["pc"] - n["rc"])))
    _close(m["dpo/rejected_reward"], np.mean(beta * (n["pr"] - n["rr"])))


def test_robust_dpo():
    beta, eps = 0.2, 0.1
    j, n = _pairs(10)
    loss, _ = losses.robust_dpo_loss(
        j["pc"], j["pr"], j["rc"], j["rr"], beta=beta, label_smoothing=eps
    )
    per = []
    for b in range(6):
        d = beta * ((n["pc"][b] - n["rc"][b]) - (n["pr"][b] - n["rr"][b]))
        per.append((-(1 - eps) * log_sigmoid(d) + eps * log_sigmoid(-d)) / (1 - 2 * eps))
    _close(loss, np.mean(per))


def test_ipo_summed_form_of_the_dpo_reference_code():
    beta = 0.4
    j, n = _pairs(20)
    loss, _ = losses.ipo_loss(j["pc"], j["pr"], j["rc"], j["rr"], beta=beta)
    per = []
    for b in range(6):
        d = (n["pc"][b] - n["rc"][b]) - (n["pr"][b] - n["rr"][b])
        per.append((d - 1 / (2 * beta)) ** 2)
    _close(loss, np.mean(per))


def test_ipo_length_normalised_form_of_trl():
    beta = 0.4
    j, n = _pairs(30)
    loss, _ = losses.ipo_loss(
        j["pc"],
        j["pr"],
        j["rc"],
        j["rr"],
        beta=beta,
        chosen_lengths_B=j["len_c"],
        rejected_lengths_B=j["len_r"],
    )
    per = []
    for b in range(6):
        chosen = (n["pc"][b] - n["rc"][b]) / max(n["len_c"][b], 1)
        rejected = (n["pr"][b] - n["rr"][b]) / max(n["len_r"][b], 1)
        per.append((chosen - rejected - 1 / (2 * beta)) ** 2)
    _close(loss, np.mean(per))


def test_hinge():
    beta = 0.3
    j, n = _pairs(40)
    loss, _ = losses.hinge_loss(j["pc"], j["pr"], j["rc"], j["rr"], beta=beta)
    per = [
        max(0.0, 1 - beta * ((n["pc"][b] - n["rc"][b]) - (n["pr"][b] - n["rr"][b])))
        for b in range(6)
    ]
    assert 0 < sum(p == 0.0 for p in per) < 6  # both sides of the hinge are exercised
    _close(loss, np.mean(per))


# ------------------------------------------------------- reference-free (averaged A(y))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo(label_smoothing):
    beta, gamma, eps = 2.0, 0.8, label_smoothing
    j, n = _pairs(50, average=True)
    loss, m = losses.simpo_loss(j["pc"], j["pr"], beta=beta, gamma=gamma, label_smoothing=eps)
    per = []
    for b in range(6):
        z = beta * (n["pc"][b] - n["pr"][b]) - gamma
        per.append(-(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z))
    _close(loss, np.mean(per))
    _close(m["simpo/chosen_reward"], np.mean(beta * n["pc"]))


def test_orpo():
    beta = 0.1
    j, n = _pairs(60, average=True)
    nll = 1.7
    loss, m = losses.orpo_loss(j["pc"], j["pr"], jnp.asarray(nll), beta=beta)
    terms, odds = [], []
    for b in range(6):
        aw, al = n["pc"][b], n["pr"][b]
        log_odds = (aw - al) - (math.log(1 - math.exp(aw)) - math.log(1 - math.exp(al)))
        odds.append(log_odds)
        terms.append(log_sigmoid(log_odds))
    _close(loss, nll - beta * np.mean(terms))
    _close(m["orpo/log_odds"], np.mean(odds))
    _close(m["orpo/log_odds_ratio"], np.mean(terms))


def test_log1mexp_both_branches():
    x = np.array([-1e-9, -0.1, -0.69, -0.7, -3.0, -40.0])
    _close(losses.log1mexp(jnp.asarray(x)), [math.log(-math.expm1(v)) for v in x])


# -------------------------------------------------------------------------------- KTO


def test_kto_with_reference_point_from_mismatched_pairs():
    beta, lam_d, lam_u = 0.1, 1.0, 1.33
    (pol, mask), (ref, _) = _token_batch(70, 8, 12), _token_batch(71, 8, 12)
    (kl_pol, kl_mask), (kl_ref, _) = _token_batch(72, 8, 12), _token_batch(73, 8, 12)
    desirable = np.array([1, 0, 1, 1, 0, 0, 1, 0], bool)

    def seq(x, m):
        return lp.sequence_logprobs(jnp.asarray(x), jnp.asarray(m))

    z = losses.kto_reference_point(seq(kl_pol, kl_mask), seq(kl_ref, kl_mask))
    loss, m = losses.kto_loss(
        seq(pol, mask),
        seq(ref, mask),
        jnp.asarray(desirable),
        beta=beta,
        reference_point=z,
        desirable_weight=lam_d,
        undesirable_weight=lam_u,
    )
    kl_terms = _np_seq(kl_pol, kl_mask) - _np_seq(kl_ref, kl_mask)
    z_np = max(0.0, float(np.mean(kl_terms)))
    r = _np_seq(pol, mask) - _np_seq(ref, mask)
    per = [
        lam_d * (1 - sigmoid(beta * (r[b] - z_np)))
        if desirable[b]
        else lam_u * (1 - sigmoid(beta * (z_np - r[b])))
        for b in range(8)
    ]
    _close(z, z_np)
    _close(loss, np.mean(per))
    _close(m["kto/chosen_reward"], np.mean(beta * r[desirable]))
    _close(m["kto/rejected_reward"], np.mean(beta * r[~desirable]))


def test_kto_reference_point_clamps_at_zero():
    z = losses.kto_reference_point(jnp.asarray([-3.0, -1.0]), jnp.asarray([-1.0, -1.0]))
    assert float(z) == 0.0


# ------------------------------------------------------------------------- Bradley-Terry


def test_bradley_terry_with_margin_and_centring():
    rng = np.random.default_rng(80)
    rw, rl, margin = rng.normal(size=9), rng.normal(size=9), rng.random(9)
    loss, m = losses.bradley_terry_loss(
        jnp.asarray(rw), jnp.asarray(rl), margin=jnp.asarray(margin), center_coef=0.01
    )
    want = -np.mean([log_sigmoid(rw[b] - rl[b] - margin[b]) for b in range(9)])
    want += 0.01 * np.mean([(rw[b] + rl[b]) ** 2 for b in range(9)])
    _close(loss, want)
    _close(m["rm/accuracy"], np.mean(rw > rl))
    _close(m["rm/margin"], np.mean(rw - rl))


# ------------------------------------------------------------------------ SFT and Aligner


@pytest.mark.parametrize("per_sequence_sum", [False, True])
def test_sft(per_sequence_sum):
    logps, mask = _token_batch(90, 5, 14, empty_row=True)
    mask[0, 0] = 1.0  # column 0 has no prediction: ignored
    loss, m = losses.sft_loss(
        jnp.asarray(logps), jnp.asarray(mask), per_sequence_sum=per_sequence_sum
    )
    total, count = 0.0, 0
    for b in range(5):
        for t in range(1, 14):
            if mask[b, t]:
                total -= logps[b, t]
                count += 1
    _close(loss, total / 5 if per_sequence_sum else total / count)
    _close(m["sft/nll"], total / count)
    _close(m["sft/nll/count"], count)


def test_aligner():
    logps, _ = _token_batch(100, 4, 16)
    attention = np.ones((4, 16))
    attention[1, 12:], attention[2, 9:] = 0, 0
    start = np.array([6, 4, 8, 15])
    loss, m = losses.aligner_loss(jnp.asarray(logps), jnp.asarray(attention), jnp.asarray(start))
    total, count = 0.0, 0
    for b in range(4):
        for t in range(start[b], 16):
            if attention[b, t]:
                total -= logps[b, t]
                count += 1
    _close(loss, total / count)
    _close(m["aligner/nll/count"], count)


# ------------------------------------------------------------------------------- PPO


def _rl_batch(seed, batch=5, length=12):
    rng = np.random.default_rng(seed)
    _, mask = _token_batch(seed, batch, length, empty_row=True)
    logps = -rng.gamma(1.0, 1.0, size=(batch, length))
    old = logps + rng.normal(scale=0.3, size=(batch, length))
    adv = rng.normal(size=(batch, length))
    return logps, old, adv, mask


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"clip_eps": 0.1, "clip_eps_high": 0.28},
        {"dual_clip": 1.5},
        {"sequence_mean": True},
    ],
)
def test_ppo_policy_loss(kw):
    logps, old, adv, mask = _rl_batch(110)
    loss, m = losses.ppo_policy_loss(
        jnp.asarray(logps), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), **kw
    )
    lo = kw.get("clip_eps", 0.2)
    hi = kw.get("clip_eps_high") or lo
    c = kw.get("dual_clip")
    rows, total, count, clipped, kl = [], 0.0, 0, 0, 0.0
    for b in range(mask.shape[0]):
        row_total, row_count = 0.0, 0
        for t in range(mask.shape[1]):
            if not mask[b, t]:
                continue
            ratio = math.exp(logps[b, t] - old[b, t])
            a = adv[b, t]
            s1, s2 = -a * ratio, -a * min(max(ratio, 1 - lo), 1 + hi)
            term = max(s1, s2)
            if c is not None and a < 0:
                term = min(term, -c * a)
            row_total += term
            row_count += 1
            clipped += s2 > s1
            kl += (ratio - 1) - math.log(ratio)
        rows.append(row_total / max(row_count, 1))
        total, count = total + row_total, count + row_count
    want = np.mean(rows) if kw.get("sequence_mean") else total / count
    _close(loss, want)
    _close(m["ppo/clipfrac"], clipped / count)
    _close(m["ppo/approx_kl"], kl / count)
    assert 0 < clipped < count  # both branches exercised


@pytest.mark.parametrize("clip_eps", [0.2, None])
def test_value_loss(clip_eps):
    rng = np.random.default_rng(120)
    _, mask = _token_batch(120, 4, 10, empty_row=True)
    v, old, ret = (rng.normal(size=(4, 10)) for _ in range(3))
    loss, m = losses.value_loss(
        jnp.asarray(v), jnp.asarray(old), jnp.asarray(ret), jnp.asarray(mask), clip_eps=clip_eps
    )
    total, count = 0.0, 0
    for b in range(4):
        for t in range(10):
            if mask[b, t]:
                un = (v[b, t] - ret[b, t]) ** 2
                if clip_eps is not None:
                    vc = old[b, t] + min(max(v[b, t] - old[b, t], -clip_eps), clip_eps)
                    un = max(un, (vc - ret[b, t]) ** 2)
                total += un
                count += 1
    _close(loss, 0.5 * total / count)
    _close(m["ppo/value_loss"], 0.5 * total / count)


def test_reinforce_with_baseline():
    logps, _, _, mask = _rl_batch(130)
    rng = np.random.default_rng(131)
    returns, baseline = rng.normal(size=5), rng.normal(size=5)
    loss, _ = losses.reinforce_loss(
        jnp.asarray(logps), jnp.asarray(mask), jnp.asarray(returns), jnp.asarray(baseline)
    )
    want = 0.0
    for b in range(5):
        s = sum(logps[b, t] for t in range(12) if mask[b, t])
        want -= (returns[b] - baseline[b]) * s
    _close(loss, want / 5)


# ------------------------------------------------------------ advantages, KL, whitening


def _np_gae(rewards, values, mask, gamma, lam):
    """Plain loop per row over its response span [start, end); V after the span is 0."""
    adv, ret = np.zeros_like(rewards), np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        idx = [t for t in range(rewards.shape[1]) if mask[b, t]]
        next_adv, next_value = 0.0, 0.0
        for t in reversed(idx):
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            next_adv = delta + gamma * lam * next_adv
            next_value = values[b, t]
            adv[b, t], ret[b, t] = next_adv, next_adv + values[b, t]
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 1.0), (0.99, 0.0)])
def test_gae_matches_python_loop_on_variable_length_sequences(gamma, lam):
    rng = np.random.default_rng(140)
    _, mask = _token_batch(140, 6, 15, empty_row=True)
    rewards = rng.normal(size=(6, 15))
    values = rng.normal(size=(6, 15))
    adv, ret = losses.gae(
        jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), gamma=gamma, lam=lam
    )
    want_adv, want_ret = _np_gae(rewards, values, mask, gamma, lam)
    _close(adv, want_adv)
    _close(ret, want_ret)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_penalty(estimator):
    logps, ref, _, mask = _rl_batch(150)
    got = losses.kl_penalty(
        jnp.asarray(logps), jnp.asarray(ref), jnp.asarray(mask), estimator=estimator
    )
    want = np.zeros_like(logps)
    for b, t in np.ndindex(*logps.shape):
        if mask[b, t]:
            d = logps[b, t] - ref[b, t]
            want[b, t] = {"k1": d, "k2": 0.5 * d * d, "k3": math.exp(-d) - 1 + d}[estimator]
    _close(got, want)
    clamped = losses.kl_penalty(
        jnp.asarray(logps), jnp.asarray(ref), jnp.asarray(mask), estimator=estimator, clamp=0.1
    )
    _close(clamped, np.clip(want, -0.1, 0.1))


def test_shaped_rewards_put_the_score_on_the_last_response_token():
    _, mask = _token_batch(160, 5, 11, empty_row=True)
    rng = np.random.default_rng(161)
    kl, scores = rng.normal(size=(5, 11)) * mask, rng.normal(size=5)
    got = losses.shaped_rewards(
        jnp.asarray(scores), jnp.asarray(kl), jnp.asarray(mask), kl_coef=0.05
    )
    want = -0.05 * kl
    for b in range(5):
        idx = [t for t in range(11) if mask[b, t]]
        if idx:
            want[b, idx[-1]] += scores[b]
    _close(got, want)


@pytest.mark.parametrize("shift_mean,unbiased", [(True, True), (False, True), (True, False)])
def test_masked_whiten(shift_mean, unbiased):
    _, mask = _token_batch(170, 5, 11, empty_row=True)
    x = np.random.default_rng(171).normal(loc=2.0, scale=3.0, size=(5, 11))
    got = losses.masked_whiten(
        jnp.asarray(x), jnp.asarray(mask), shift_mean=shift_mean, unbiased=unbiased
    )
    vals = x[mask == 1]
    n = len(vals)
    mean = vals.sum() / n
    var = ((vals - mean) ** 2).sum() / ((n - 1) if unbiased else n)
    want = (x - mean) / math.sqrt(var + 1e-8)
    if not shift_mean:
        want = want + mean
    _close(got, want * mask)


def test_rloo_and_grpo_advantages():
    rewards = np.random.default_rng(180).normal(size=12)
    k = 4
    rloo = losses.rloo_advantages(jnp.asarray(rewards), group_size=k)
    grpo = losses.grpo_advantages(jnp.asarray(rewards), group_size=k)
    grpo_unscaled = losses.grpo_advantages(jnp.asarray(rewards), group_size=k, scale=False)
    want_rloo, want_grpo, want_centred = [], [], []
    for i in range(12):
        group = [rewards[j] for j in range(i // k * k, i // k * k + k)]
        others = [rewards[j] for j in range(i // k * k, i // k * k + k) if j != i]
        want_rloo.append(rewards[i] - sum(others) / (k - 1))
        mean = sum(group) / k
        std = math.sqrt(sum((g - mean) ** 2 for g in group) / (k - 1))
        want_grpo.append((rewards[i] - mean) / (std + 1e-4))
        want_centred.append(rewards[i] - mean)
    _close(rloo, want_rloo)
    _close(grpo, want_grpo)
    _close(grpo_unscaled, want_centred)


@pytest.mark.parametrize("observed", [0.5, 5.9, 6.3, 40.0])
def test_adaptive_kl_update(observed):
    coef, target, horizon, n = 0.2, 6.0, 10000.0, 256
    error = min(max(observed / target - 1, -0.2), 0.2)
    got = losses.adaptive_kl_update(coef, observed, target=target, horizon=horizon, n_steps=n)
    _close(got, coef * (1 + error * n / horizon))
