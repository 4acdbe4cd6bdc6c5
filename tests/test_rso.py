"""Statistical rejection sampling (RSO): the acceptance rule in closed form, the tilted
distribution it draws from, the pairs, and the job on a tiny model."""

import json
import os

import numpy as np
import pytest

from alignjax.rl import rso


def test_acceptance_probability_is_the_formula():
    r = np.array([0.2, -0.5, 0.9, 0.9, 0.0])
    for beta in (0.1, 0.5, 2.0):
        want = [np.exp((x - 0.9) / beta) for x in r]
        np.testing.assert_allclose(rso.acceptance_probability(r, beta), want, rtol=1e-15)
    with pytest.raises(ValueError, match=r"config\.rso\.beta"):
        rso.acceptance_probability(r, 0.0)


def test_first_acceptance_follows_the_sweep_in_closed_form():
    """With rewards (0, 1, 2) and one sample wanted, the sweep accepts candidate 0 with
    a0 = exp(-2 / beta), else 1 with a1 = exp(-1 / beta), else 2 (the maximum) surely."""
    beta, trials = 1.0, 20000
    a0, a1 = np.exp(-2 / beta), np.exp(-1 / beta)
    want = np.array([a0, (1 - a0) * a1, (1 - a0) * (1 - a1)])
    got = rso.select(np.tile([0.0, 1.0, 2.0], (trials, 1)), num_samples=1, beta=beta,
                     rng=np.random.default_rng(0))
    freq = np.bincount([g[0] for g in got], minlength=3) / trials
    se = np.sqrt(want * (1 - want) / trials)
    assert np.all(np.abs(freq - want) < 5 * se), (freq, want)


def test_accepted_samples_follow_the_tilted_distribution():
    """Candidates drawn from pi over 4 outcomes; with many candidates per prompt the maximum is
    the largest reward, and the accepted ones are draws of pi * exp(r / beta) / Z."""
    pi = np.array([0.4, 0.3, 0.2, 0.1])
    r = np.array([0.0, 0.5, 1.0, 2.0])
    beta = 0.8
    tilted = pi * np.exp(r / beta)
    tilted /= tilted.sum()
    rng = np.random.default_rng(1)
    outcomes_PN = rng.choice(4, size=(400, 200), p=pi)
    accepted = rso.select(r[outcomes_PN], num_samples=10, beta=beta, rng=rng)
    drawn = np.array([outcomes_PN[p, i] for p, idx in enumerate(accepted) for i in idx])
    freq = np.bincount(drawn, minlength=4) / len(drawn)
    se = np.sqrt(tilted * (1 - tilted) / len(drawn))
    assert np.all(np.abs(freq - tilted) < 5 * se), (freq, tilted)
    assert 0.5 * np.abs(freq - pi).sum() > 0.2  # far from the untilted distribution (TV)
    # without replacement: distinct candidates per prompt, as many as asked
    assert all(len(set(idx)) == len(idx) == 10 for idx in accepted)


def test_select_takes_every_candidate_when_asked_for_all():
    rewards_PN = np.array([[0.0, -3.0, 1.0, 0.5]])
    got = rso.select(rewards_PN, num_samples=4, beta=0.01, rng=np.random.default_rng(0))
    # a tiny beta accepts only the current maximum in each sweep: the candidates by reward
    assert got == [[2, 3, 0, 1]]
    with pytest.raises(ValueError, match=r"config\.rso\.num_samples=5"):
        rso.select(rewards_PN, num_samples=5, beta=1.0, rng=np.random.default_rng(0))


def test_stats_and_pairs():
    rng = np.random.default_rng(0)
    rewards_PN = rng.normal(size=(300, 8))
    accepted = rso.select(rewards_PN, num_samples=4, beta=0.3, rng=rng)
    stats = rso.acceptance_stats(rewards_PN, beta=0.3, accepted=accepted, rng=rng)
    expected = np.mean([rso.acceptance_probability(x, 0.3) for x in rewards_PN])
    np.testing.assert_allclose(stats["acceptance_rate_expected"], expected, rtol=1e-12)
    assert stats["acceptance_rate_ci95_low"] < expected < stats["acceptance_rate_ci95_high"]
    assert stats["reward_gain_ci95_low"] > 0  # tilted towards high reward
    assert stats["reward_accepted"] > stats["reward_random"]
    assert abs(stats["reward_random"] - rewards_PN.mean()) < 0.1
    rows = [{"prompt": f"p{p}", "response": f"r{p}-{i}"} for p in range(300) for i in range(8)]
    pairs = rso.pairs(rows, rewards_PN, accepted, min_gap=0.0)
    assert len(pairs) == 600  # two per prompt: normal rewards never tie
    for pair in pairs:
        assert pair["chosen_reward"] > pair["rejected_reward"]
        p, i = (int(x) for x in pair["chosen"][1:].split("-"))
        assert rewards_PN[p, i] == pair["chosen_reward"]


@pytest.mark.slow
def test_rso_job_on_a_tiny_model(tiny_model_dir, tmp_path):
    from test_online_dpo import _rows, _tiny
    from test_train import REPO, _load

    from alignjax import online_dpo

    config = _tiny(_load(os.path.join(REPO, "configs", "rso.py")), tiny_model_dir)
    config.samples_per_prompt, config.rso.num_samples = 4, 2
    online_dpo.run(config, str(tmp_path))
    stats = json.loads((tmp_path / "rso_stats.json").read_text())
    assert stats["candidates"] == 8 * 4 and stats["accepted_per_prompt"] == 2
    assert 0 < stats["acceptance_rate_expected"] <= 1
    pairs = _rows(tmp_path / "pairs.jsonl")
    assert len(pairs) == stats["pairs"] == 8  # config.min_reward_gap = -1 keeps every pair
    assert all(p["chosen_reward"] >= p["rejected_reward"] for p in pairs)
    assert [r["step"] for r in _rows(tmp_path / "eval.jsonl")] == [0, 1, 2]
