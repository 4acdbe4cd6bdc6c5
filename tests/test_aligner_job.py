"""Aligner stacking, copy rate, the copy warm-up and the reward-model judge (alignjax.aligner)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from alignjax import aligner, data, models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

QUESTIONS = [f"Question {i}: what is {i} + {i}?" for i in range(7)]
ANSWERS = [f"  It is {2 * i}, of course.  " if i % 2 else f"{2 * i}" for i in range(7)]


def _config(name: str):
    sys.path.insert(0, REPO)
    try:
        import importlib

        return importlib.import_module(f"configs.{name}").get_config()
    finally:
        sys.path.remove(REPO)


def _answers_file(tmp_path) -> str:
    path = os.path.join(tmp_path, "answers.json")
    with open(path, "w") as f:
        json.dump([{"instruction": q, "original_output": a, "generator": "x"}
                   for q, a in zip(QUESTIONS, ANSWERS)], f)
    return path


def _stack_config(tmp_path, **answers):
    config = _config("aligner_stack")
    config.answers.path = _answers_file(tmp_path)
    config.answers.limit = 0
    config.answers.fit = False  # tested on its own below
    config.aligner.sample_batch = 3  # 7 rows: batches of 3, 3 and 1
    config.answers.update(answers)
    return config


def identity(questions, answers):
    return list(answers)


def test_stack_with_an_identity_corrector_returns_the_input(tmp_path):
    config = _stack_config(tmp_path)
    summary = aligner.run_stack(config, str(tmp_path / "run"), corrector=identity)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "stacked.jsonl")]
    assert [r["question"] for r in rows] == QUESTIONS
    assert [r["answer"] for r in rows] == ANSWERS
    assert [r["correction"] for r in rows] == ANSWERS
    assert summary["copy_rate"] == 1.0 and summary["copies"] == summary["rows"] == 7


def test_stack_keeps_only_answers_that_fit_the_decoding_budget(tmp_path, smollm2_tokenizer):
    lengths = [len(smollm2_tokenizer(a, add_special_tokens=False).input_ids) for a in ANSWERS]
    budget = sorted(lengths)[3] + 1  # the four shortest fit (lengths below the budget)
    config = _stack_config(tmp_path, fit=True)
    config.aligner.max_new_tokens = budget
    summary = aligner.run_stack(config, str(tmp_path / "run"), corrector=identity)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "stacked.jsonl")]
    assert [r["answer"] for r in rows] == [a for a, n in zip(ANSWERS, lengths) if n < budget]
    assert (summary["rows"], summary["rows_read"]) == (len(rows), 7)
    config = _stack_config(tmp_path, fit=True)
    config.aligner.max_new_tokens = min(lengths)
    with pytest.raises(ValueError, match="config.answers.fit"):
        aligner.run_stack(config, str(tmp_path / "run2"), corrector=identity)


def test_stack_keeps_each_correction_with_its_answer(tmp_path):
    # a corrector that changes its input: the rows must pair each answer with its own output
    def shout(questions, answers):
        return [a.upper() + "!" for a in answers]

    config = _stack_config(tmp_path, limit=5)
    summary = aligner.run_stack(config, str(tmp_path / "run"), corrector=shout)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "stacked.jsonl")]
    assert [r["correction"] for r in rows] == [a.upper() + "!" for a in ANSWERS[:5]]
    assert summary["copy_rate"] == 0.0 and summary["rows"] == 5
    with pytest.raises(ValueError, match="returned 2 corrections for 3 answers"):
        aligner.stack(lambda q, a: a[:2], QUESTIONS, ANSWERS, batch_size=3)


def test_answers_file_errors_name_the_field(tmp_path):
    config = _stack_config(tmp_path, answer_field="output")
    with pytest.raises(data.MalformedRowError, match="output"):
        aligner.run_stack(config, str(tmp_path / "run"), corrector=identity)
    config = _stack_config(tmp_path, path=str(tmp_path / "missing.json"))
    with pytest.raises(FileNotFoundError, match=r"config\.answers\.path"):
        aligner.run_stack(config, str(tmp_path / "run2"), corrector=identity)


def test_copy_rate_and_warmup_share():
    rate = aligner.copy_rate(["a", " b ", "c", "d"], ["a ", "b", "x", "d!"])
    assert (rate["copies"], rate["n"], rate["copy_rate"]) == (2, 4, 0.5)
    assert rate["copy_rate_ci95_low"] < 0.5 < rate["copy_rate_ci95_high"]
    ex = [data.CorrectionExample(f"q{i}", f"a{i}", f"c{i}") for i in range(10)]
    for share, copies in ((0.0, 0), (0.3, 3), (1.0, 10)):
        warm = aligner.warmup_examples(ex, share, seed=0)
        assert [w.question for w in warm] == [e.question for e in ex]
        assert sum(w.correction == w.answer for w in warm) == copies
        assert all(w.correction in (e.answer, e.correction) for w, e in zip(warm, ex))
    with pytest.raises(ValueError, match=r"config\.aligner\.copy_share"):
        aligner.warmup_examples(ex, 1.5, seed=0)


@pytest.fixture(scope="module")
def tiny_rm(tiny_model_dir):
    model, _, tok = models.load({"path": tiny_model_dir}, None, head="scalar")
    return model, tok


def test_judge_counts_and_intervals_on_a_tiny_reward_model(tiny_rm):
    model, tok = tiny_rm
    score = aligner.reward_model_scores(model, tok, max_length=64, batch_size=4)
    corrected = [a.strip() + " Hope this helps." for a in ANSWERS]
    # each pair scored alone (batches of one row, other padding): the reference scores
    one = aligner.reward_model_scores(model, tok, max_length=64, batch_size=1)
    s_o = np.array([one([q], [a])[0] for q, a in zip(QUESTIONS, ANSWERS)])
    s_c = np.array([one([q], [c])[0] for q, c in zip(QUESTIONS, corrected)])
    np.testing.assert_allclose(score(QUESTIONS, ANSWERS), s_o, rtol=1e-4, atol=1e-5)

    r = aligner.judge(score, QUESTIONS, ANSWERS, corrected, tokenizer=tok, resamples=4000)
    wins, losses = int((s_c > s_o).sum()), int((s_c < s_o).sum())
    assert (r["wins"], r["losses"], r["ties"]) == (wins, losses, 7 - wins - losses)
    assert r["improvement_pct"] == pytest.approx(100 * (wins - losses) / 7)
    assert r["improvement_pct_ci95_low"] <= r["improvement_pct"] <= r["improvement_pct_ci95_high"]
    chars = [len(c) - len(a) for a, c in zip(ANSWERS, corrected)]
    assert r["length_change_chars"] == pytest.approx(np.mean(chars))
    assert r["length_change_tokens"] > 0
    # against itself: every comparison a tie, an interval of width 0
    same = aligner.judge(score, QUESTIONS, ANSWERS, ANSWERS)
    assert (same["ties"], same["improvement_pct"], same["improvement_pct_ci95_low"],
            same["improvement_pct_ci95_high"]) == (7, 0.0, 0.0, 0.0)
    # swapped: the wins become losses
    swapped = aligner.judge(score, QUESTIONS, corrected, ANSWERS)
    assert (swapped["wins"], swapped["losses"]) == (losses, wins)
    assert "| rm | 7 |" in aligner.judge_table({"rm": r})


def test_length_controls_remove_a_judge_that_only_rewards_length():
    # a judge whose score is the length in characters plus a fixed per-row quality; the
    # corrections add length and change quality by +1 on half the rows, -1 on the others: the
    # raw comparison favours the corrections, the length-adjusted gain is the quality change
    rng = np.random.default_rng(0)
    n = 200
    quality = rng.choice([-1.0, 1.0], size=n)
    originals = [f"{i:03d}" + "x" * int(k) for i, k in enumerate(rng.integers(20, 60, size=n))]
    corrected = [o + "y" * int(k) for o, k in zip(originals, rng.integers(10, 40, size=n))]
    table = {o: 0.0 for o in originals} | {c: q for c, q in zip(corrected, quality)}
    score = lambda qs, rs: np.array([0.1 * len(r) + table[r] for r in rs])  # noqa: E731
    r = aligner.judge(score, [""] * n, originals, corrected)
    assert r["improvement_pct"] > 40  # length wins most comparisons
    assert r["length_slope"] == pytest.approx(0.1, abs=0.02)
    assert r["length_adjusted_gain"] == pytest.approx(quality.mean(), abs=0.15)
    assert r["length_adjusted_gain_ci95_low"] < quality.mean() < r["length_adjusted_gain_ci95_high"]
    assert r["length_matched_n"] == 0  # every correction is longer by more than 10%
    # corrections of the same length: the matched subset is every row and the adjusted gain is
    # the mean quality change exactly
    same = [o[:-1] + "z" for o in originals]
    table = {o: 0.0 for o in originals} | {c: q for c, q in zip(same, quality)}
    r = aligner.judge(score, [""] * n, originals, same)
    assert r["length_matched_n"] == n
    assert r["length_adjusted_gain"] == pytest.approx(quality.mean())
    assert r["length_matched_improvement_pct"] == pytest.approx(100 * quality.mean())


def test_bootstrap_interval_matches_the_normal_width():
    # outcomes +1 / -1 / 0 from a fixed score function: the 95% percentile bootstrap of the
    # mean has about the width of the normal interval, 2 * 1.96 * sd / sqrt(n)
    rng = np.random.default_rng(3)
    n = 400
    base, delta = rng.normal(size=n), rng.choice([-1.0, 0.0, 1.0], size=n, p=[0.3, 0.2, 0.5])
    table = {f"o{i}": base[i] for i in range(n)} | {f"c{i}": base[i] + delta[i] for i in range(n)}
    score = lambda qs, rs: np.array([table[r] for r in rs])  # noqa: E731
    r = aligner.judge(score, [""] * n, [f"o{i}" for i in range(n)], [f"c{i}" for i in range(n)])
    outcome = np.sign(delta) * 100
    assert r["improvement_pct"] == pytest.approx(outcome.mean())
    width = r["improvement_pct_ci95_high"] - r["improvement_pct_ci95_low"]
    assert width == pytest.approx(2 * 1.959964 * outcome.std() / np.sqrt(n), rel=0.1)


def _tiny_stack_config(tmp_path, tiny_model_dir):
    config = _stack_config(tmp_path, limit=4)
    config.model.path = tiny_model_dir
    config.data.template = "aligner"
    config.aligner.max_new_tokens = 4
    config.aligner.prompt_buckets = (64,)
    config.aligner.sample_batch = 2
    return config


def test_stack_job_on_upstream_samples_with_a_tiny_aligner_and_judge(tiny_model_dir, tmp_path):
    """The job end to end with models: a tiny random upstream model answers, the same model
    corrects (greedy) and, with a random scalar head, judges."""
    config = _tiny_stack_config(tmp_path, tiny_model_dir)
    config.upstream.path = tiny_model_dir
    config.judge.reward_models.helpful = tiny_model_dir
    config.judge.max_length = 64
    summary = aligner.run_stack(config, str(tmp_path / "run"))
    up = [json.loads(line) for line in open(tmp_path / "run" / "upstream.jsonl")]
    rows = [json.loads(line) for line in open(tmp_path / "run" / "stacked.jsonl")]
    assert [r["question"] for r in up] == [r["question"] for r in rows] == QUESTIONS[:4]
    assert [r["answer"] for r in rows] == [r["answer"] for r in up] != ANSWERS[:4]
    assert list(summary["judge"]) == ["helpful"]  # the harmless judge is unset
    assert summary["rows"] == summary["judge"]["helpful"]["n"] == 4
    assert json.loads((tmp_path / "run" / "judge.json").read_text()) == summary["judge"]


@pytest.mark.slow
def test_the_notebook_function_gives_the_jobs_corrections(tiny_model_dir, tmp_path):
    config = _tiny_stack_config(tmp_path, tiny_model_dir)
    aligner.run_stack(config, str(tmp_path / "run"))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "stacked.jsonl")]
    assert [r["answer"] for r in rows] == ANSWERS[:4]
    model, _, tok = models.load({"path": tiny_model_dir}, None)
    again = aligner.correct(model, tok, QUESTIONS[:4], ANSWERS[:4], template="aligner",
                            max_new_tokens=4, prompt_buckets=(64,), batch_size=2)
    assert again == [r["correction"] for r in rows]


@pytest.mark.slow
def test_copy_warmup_job_on_a_tiny_model(tiny_model_dir, tmp_path):
    """aligner_train: warm-up on identity copies, then corrections from the warm-up's export;
    the copy rate measured before, after the warm-up and at the end (~50 s: two training
    stages and three decoding passes)."""
    path = os.path.join(tmp_path, "triplets.json")
    with open(path, "w") as f:
        json.dump([{"question": f"q{i}?", "answer": f"answer {i}", "correction": f"better {i}"}
                   for i in range(20)], f)
    config = _config("aligner_warmup")
    config.model.path = tiny_model_dir
    config.data.train, config.data.format, config.data.eval_size = path, "aligner", 4
    config.data.max_length, config.data.max_prompt_length = 64, 32
    config.data.buckets = (64,)
    config.steps, config.aligner.copy_warmup_steps = 2, 2
    config.batch_size = config.eval_batch_size = 4
    config.log_every = config.eval_every = config.checkpoint_every = 1
    config.aligner.copy_eval_size = 2
    config.aligner.max_new_tokens = 6  # the answers (3 tokens) fit: they can be copied
    config.aligner.prompt_buckets = (64,)
    config.aligner.sample_batch = 2
    work = tmp_path / "run"
    out = aligner.run_train(config, str(work))
    assert set(out["copy_rate"]) == {"before", "after_warmup", "after"}
    assert all(r["n"] == 2 for r in out["copy_rate"].values())
    warm = [json.loads(line) for line in open(work / "data" / "warmup.jsonl")]
    main = [json.loads(line) for line in open(work / "data" / "train.jsonl")]
    held = [json.loads(line) for line in open(work / "data" / "eval.jsonl")]
    assert len(warm) == len(main) == 16 and len(held) == 4
    assert all(r["correction"] == r["answer"] for r in warm)
    assert all(r["correction"].startswith("better") for r in main + held)
    assert not {r["question"] for r in held} & {r["question"] for r in main}
    second = json.loads((work / "train" / "config.json").read_text())
    assert second["model"]["path"] == str(work / "warmup" / "export")
    assert out["warmup"]["train/loss"] > 0 and out["train"]["train/loss"] > 0
    decoded = [json.loads(line) for line in open(work / "corrections_after.jsonl")]
    assert [r["answer"] for r in decoded] == [r["answer"] for r in held[:2]]
