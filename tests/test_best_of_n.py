"""Best-of-N and rejection-sampling fine-tuning on tiny models, against NumPy and closed forms."""

import itertools
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from test_train import REPO, _load

from alignjax import checkpoint, models, rejection_sampling
from alignjax import data as data_lib
from alignjax.rl import best_of_n
from alignjax.rl.generation import Generator, read_jsonl


def text_reward(prompts, responses):
    """A reward that spreads a random model's text over many values: a hash of the characters."""
    return np.array([(sum(map(ord, p + r)) * 7919 % 101) / 100
                     for p, r in zip(prompts, responses, strict=True)])


def _first_argmax(values):
    best = 0
    for j, v in enumerate(values):
        if v > values[best]:
            best = j
    return best


def test_selection_is_the_first_argmax_of_the_first_n_samples():
    rewards_PM = np.random.default_rng(0).integers(0, 4, size=(50, 32)).astype(float)  # ties
    rows = [{"prompt": p, "sample": j, "reward": rewards_PM[p, j]}
            for p in range(50) for j in range(32)]
    for n in best_of_n.NS:
        ref = [_first_argmax(list(r[:n])) for r in rewards_PM]
        np.testing.assert_array_equal(best_of_n.best_indices(rewards_PM, n), ref)
        chosen = best_of_n.select(rows, rewards_PM, n)
        assert [(c["prompt"], c["sample"]) for c in chosen] == list(enumerate(ref))
        row = best_of_n.summarise(rewards_PM, [n])[0]
        assert row["reward"] == pytest.approx(np.mean(rewards_PM[:, :n].max(axis=1)), abs=1e-12)
    with pytest.raises(ValueError, match="n=33: expected 1 <= n <= 32"):
        best_of_n.best_indices(rewards_PM, 33)


def test_analytic_kl_and_the_empirical_kl_against_enumeration():
    assert best_of_n.analytic_kl(1) == 0.0
    for n in (2, 4, 8, 16, 32):
        assert best_of_n.analytic_kl(n) == pytest.approx(np.log(n) - (n - 1) / n, abs=1e-15)
    assert best_of_n.analytic_kl(2) == pytest.approx(0.1931471805599453, abs=1e-15)

    # Exact KL(best-of-n || base) over 5 equally likely samples with tied rewards, by listing
    # all 5**n draws and keeping the first best of each.
    rewards_M = np.array([0.3, -1.0, 0.3, 2.0, 0.0])
    for n in (1, 2, 3, 4):
        bon = np.zeros(5)
        for draw in itertools.product(range(5), repeat=n):
            bon[draw[_first_argmax([rewards_M[i] for i in draw])]] += 0.2 ** n
        kl = float(np.sum(bon[bon > 0] * np.log(bon[bon > 0] / 0.2)))
        assert best_of_n.empirical_kl(rewards_M, n) == pytest.approx(kl, abs=1e-12)
        assert kl <= best_of_n.analytic_kl(n)
    assert best_of_n.empirical_kl(rewards_M, 1) == pytest.approx(0.0, abs=1e-15)
    assert best_of_n.empirical_kl(np.zeros(8), 16) == pytest.approx(0.0, abs=1e-15)  # all tied
    # many distinct rewards: the empirical distribution tends to a continuous one, whose
    # best-of-n KL is the analytic value (from below: a discrete one has less room)
    many = np.random.default_rng(1).normal(size=200_000)
    for n in (2, 8, 32):
        gap = best_of_n.analytic_kl(n) - best_of_n.empirical_kl(many, n)
        assert 0 < gap < 1e-3


def level(text):
    """A reward of one token's text with five values, spread over the vocabulary."""
    return (sum(map(ord, text)) % 5) / 4


@pytest.fixture(scope="module")
def bon_job(tiny_model_dir, tmp_path_factory):
    """The best-of-N job on a tiny model: 64 held-out openings x 32 samples of one token at
    temperature 0.5, scored by `level` of the token's text."""
    config = _load(os.path.join(REPO, "configs", "best_of_n.py"))
    config.model.path = tiny_model_dir
    config.max_new_tokens, config.sample_batch, config.temperature = 1, 8, 0.5
    workdir = tmp_path_factory.mktemp("best_of_n")
    results = best_of_n.run(config, str(workdir),
                            reward_fn=lambda ps, rs: np.array([level(r) for r in rs]))
    return config, workdir, results


def test_best_of_n_job_selects_nested_bests(bon_job):
    config, workdir, results = bon_job
    p, m = 64, 32
    rows = read_jsonl(workdir / "samples.jsonl")
    assert len(rows) == p * m and [r["sample"] for r in rows[:m]] == list(range(m))
    assert len({r["prompt"] for r in rows}) == p
    rewards_PM = np.array([r["reward"] for r in rows]).reshape(p, m)
    np.testing.assert_array_equal(rewards_PM.ravel(), [level(r["response"]) for r in rows])
    selected = read_jsonl(workdir / "selected.jsonl")
    best_PN = np.zeros((p, len(best_of_n.NS)))
    for k, n in enumerate(best_of_n.NS):
        chosen = [s for s in selected if s["n"] == n]
        ref = [_first_argmax(list(r[:n])) for r in rewards_PM]
        assert [c["sample"] for c in chosen] == ref
        assert [c["prompt"] for c in chosen] == [rows[m * i]["prompt"] for i in range(p)]
        best_PN[:, k] = [c["reward"] for c in chosen]
        np.testing.assert_array_equal(best_PN[:, k], rewards_PM[:, :n].max(axis=1))
        assert results[str(n)]["reward"] == pytest.approx(best_PN[:, k].mean(), abs=1e-12)
        assert results[str(n)]["analytic_kl"] == pytest.approx(np.log(n) - (n - 1) / n)
    assert np.all(np.diff(best_PN, axis=1) >= 0)  # nested subsets: never worse with more
    assert np.any(np.diff(best_PN, axis=1) > 0)
    assert results["1"]["empirical_kl"] == 0.0
    kls = [results[str(n)]["empirical_kl"] for n in best_of_n.NS]
    # a discrete reward is a coarse view of a continuous one: less KL than the analytic value
    assert np.all(np.diff(kls) > 0)
    assert all(kl < best_of_n.analytic_kl(n) for kl, n in zip(kls[1:], best_of_n.NS[1:]))
    assert os.path.getsize(workdir / "best_of_n.png") > 1000
    stats = read_jsonl(workdir / "sample_stats.jsonl")[0]
    assert stats["samples"] == p * m and stats["response_tokens"] == 1.0
    assert stats["reward_all"] == pytest.approx(rewards_PM.mean(), abs=1e-12)
    assert "| N | reward (95% CI) | analytic KL" in (workdir / "results.md").read_text()

    def no_reward(prompts, responses):
        raise AssertionError("the samples should have been reused")

    assert best_of_n.run(config, str(workdir), reward_fn=no_reward) == results


def test_mean_best_of_n_reward_matches_the_expected_maximum(bon_job, tiny_model_dir):
    """With one new token and a reward of it, the model's exact next-token distribution gives
    the reward distribution of every prompt, and the mean reward of the best of N its expected
    maximum: sum_k v_k (F_k^N - F_(k-1)^N)."""
    config, workdir, results = bon_job
    rows = read_jsonl(workdir / "samples.jsonl")
    p, m = 64, 32
    assert all(r["tokens"] == 1 for r in rows)
    rewards_PM = np.array([r["reward"] for r in rows]).reshape(p, m)

    model, cfg, tokenizer = models.load({"path": tiny_model_dir}, None)
    gen = Generator(config, nnx.split(model)[0], cfg, tokenizer, None)  # its encode and stops
    openings = [r["prompt"] for r in rows[::m]]
    ids = [gen.encode(o) for o in openings]
    width = max(map(len, ids))  # one full forward pass (no cache) of the left-padded prompts
    ids_PL = np.array([[0] * (width - len(i)) + i for i in ids], np.int32)
    mask_PL = np.array([[0] * (width - len(i)) + [1] * len(i) for i in ids], np.int32)
    graphdef, params = nnx.split(model)
    forward = jax.jit(lambda q, x, a: nnx.merge(graphdef, q)(x, a)[:, -1])
    logits_PV = np.asarray(jax.device_get(forward(params, ids_PL, mask_PL)), np.float64)
    z_PV = (logits_PV - logits_PV.max(axis=1, keepdims=True)) / 0.5  # temperature 0.5
    p_PV = np.exp(z_PV) / np.exp(z_PV).sum(axis=1, keepdims=True)
    texts = tokenizer.batch_decode([[v] for v in range(cfg.vocab_size)],
                                   skip_special_tokens=True)
    stops = set(gen.sampler.stop_token_ids)
    level_V = np.array([level("" if v in stops else t) for v, t in enumerate(texts)])
    values_K = np.unique(level_V)
    q_PK = np.stack([p_PV[:, level_V == v].sum(axis=1) for v in values_K], axis=1)
    assert q_PK.max() < 0.5  # a spread-out reward distribution, not one dominant level

    # the samples follow the exact distributions (4.5 standard errors per level) ...
    freq_K = np.array([np.mean(rewards_PM == v) for v in values_K])
    sd_K = np.sqrt(np.sum(m * q_PK * (1 - q_PK), axis=0)) / (p * m)
    np.testing.assert_array_less(np.abs(freq_K - q_PK.mean(axis=0)), 4.5 * sd_K)
    # ... and the mean of the best of N is the mean over prompts of the expected maximum
    cdf_PK = np.cumsum(q_PK, axis=1)
    for n in best_of_n.NS:
        pmf_PK = cdf_PK ** n - np.concatenate([np.zeros((p, 1)), cdf_PK[:, :-1]], axis=1) ** n
        mean_P = pmf_PK @ values_K
        var_P = pmf_PK @ values_K ** 2 - mean_P ** 2
        se = np.sqrt(np.maximum(var_P, 0).sum()) / p
        assert abs(results[str(n)]["reward"] - mean_P.mean()) < 4.5 * se + 1e-9, n
    assert results["32"]["reward"] > results["1"]["reward"] + 0.2


class Killed(Exception):
    pass


def _tiny_rs(model_dir):
    config = _load(os.path.join(REPO, "configs", "rejection_sampling.py"))
    config.model.path = model_dir
    config.train_prompts, config.eval_prompts = 8, 4
    config.samples_per_prompt, config.eval_samples = 2, 2
    config.max_new_tokens, config.sample_batch = 6, 4
    config.steps, config.batch_size, config.eval_batch_size = 2, 4, 2
    config.log_every = config.eval_every = config.checkpoint_every = 2
    config.data.eval_size = 0  # no held-out nll: one compilation fewer per round
    config.optim.learning_rate, config.optim.warmup_steps = 1e-3, 0
    return config


@pytest.mark.slow  # two rounds of sampling and SFT: ~40 s of the default tier's budget
def test_rejection_sampling_two_rounds_and_resume(tiny_model_dir, tmp_path):
    config = _tiny_rs(tiny_model_dir)
    calls = []

    def killed_in_round_2(prompts, responses):
        calls.append(len(prompts))
        if len(calls) == 4:  # base held-out, round 1 samples, round 1 held-out, round 2 samples
            raise Killed("killed in round 2")
        return text_reward(prompts, responses)

    with pytest.raises(Killed):
        rejection_sampling.run(config, str(tmp_path), reward_fn=killed_in_round_2)
    r1, r2 = tmp_path / "round_1", tmp_path / "round_2"
    assert (r1 / "round.json").exists() and not (r2 / "round.json").exists()
    finished = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in r1.rglob("*") if p.is_file()}

    calls.clear()
    out = rejection_sampling.run(config, str(tmp_path), reward_fn=killed_in_round_2)
    assert calls == [8 * 2, 4 * 2]  # round 2's samples and held-out only: round 1 not redone
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in finished} == finished
    assert out["rounds"] == 2 and (r2 / "round.json").exists()

    # the kept samples are each prompt's best, in the sft format the runner reads
    for rdir in (r1, r2):
        samples = read_jsonl(rdir / "samples.jsonl")
        rewards_PM = np.array([s["reward"] for s in samples]).reshape(8, 2)
        kept = read_jsonl(rdir / "kept.jsonl")
        assert [k["reward"] for k in kept] == list(rewards_PM.max(axis=1))
        examples, _ = data_lib.load_examples(str(rdir / "kept.jsonl"), "sft")
        assert [e.messages for e in examples] == [
            ({"role": "user", "content": f"Continue this movie review: \"{s['prompt']}\""},
             {"role": "assistant", "content": k["response"]})
            for s, k in zip(samples[::2], kept, strict=True)]
        counts = json.loads((rdir / "train" / "data_counts.json").read_text())
        assert counts["train"]["tokenized"] == 8
    assert json.loads((r2 / "train" / "config.json").read_text())["model"]["path"] == str(
        r1 / "train" / "export")

    # round 2 sampled from round 1's trained checkpoint: the same draws again from it
    model, cfg, tokenizer = models.load({"path": tiny_model_dir}, None)
    graphdef, base_params = nnx.split(model)
    gen = Generator(config, graphdef, cfg, tokenizer, None)
    trained = checkpoint.restore_params(str(r1 / "train" / "checkpoints"), base_params)
    openings = [s["prompt"] for s in read_jsonl(r2 / "samples.jsonl")[::2]]
    again = gen(trained, openings, n=2, seed=config.seed + 2)
    r2_rows = [{k: v for k, v in s.items() if k not in ("reward", "sample")}
               for s in read_jsonl(r2 / "samples.jsonl")]
    assert again == r2_rows
    assert gen(base_params, openings, n=2, seed=config.seed + 2) != r2_rows

    base = json.loads((tmp_path / "base_eval.json").read_text())
    assert abs(base["kl"]) < 1e-4  # the base model against itself
    assert os.path.getsize(tmp_path / "rejection_sampling.png") > 1000
    assert len(read_jsonl(tmp_path / "rounds.jsonl")) == 2
