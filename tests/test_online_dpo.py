"""The online DPO job (sample -> label by a true reward -> train -> judge) on a tiny model."""

import json
import os

import numpy as np
from test_train import REPO, _load

from alignjax import online_dpo


def _tiny(config, model_dir):
    config.model.path = model_dir
    config.train_prompts, config.eval_prompts = 8, 4
    config.samples_per_prompt, config.eval_samples = 2, 2
    config.min_reward_gap = -1.0  # a random model's text is mostly neutral: keep every pair
    config.max_new_tokens, config.sample_batch = 8, 4
    config.steps, config.batch_size, config.eval_batch_size = 2, 4, 2
    config.log_every = config.eval_every = config.checkpoint_every = 1
    config.data.eval_size = 2
    config.export = False
    return config


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_online_dpo_job_end_to_end(tiny_model_dir, tmp_path, capsys):
    config = _tiny(_load(os.path.join(REPO, "configs", "sentiment_dpo.py")), tiny_model_dir)
    online_dpo.run(config, str(tmp_path))
    pairs = _rows(tmp_path / "pairs.jsonl")
    assert len(pairs) == 8
    assert all(p["chosen_reward"] >= p["rejected_reward"] for p in pairs)
    evals = _rows(tmp_path / "eval.jsonl")
    assert [r["step"] for r in evals] == [0, 1, 2]
    # Step 0 is the reference judged against itself: the sampler's log-probs of its own tokens
    # equal the trainer's reference log-probs (KL exactly 0), and every comparison is a tie.
    assert abs(evals[0]["kl"]) < 1e-4 and evals[0]["kl_ci95_high"] - evals[0]["kl"] < 1e-4
    assert evals[0]["win_rate"] == 0.5
    assert all(np.isfinite(r["reward"]) and -1 <= r["reward"] <= 1 for r in evals)
    assert os.path.getsize(tmp_path / "reward_kl.png") > 1000
    assert "| step | true reward" in capsys.readouterr().out
    samples = _rows(tmp_path / "samples.jsonl")
    assert len(samples) == 8 and {"reference", "trained"} <= set(samples[0])
    # a second run reuses every stage: the same pairs and the same judged results
    online_dpo.run(config, str(tmp_path))
    assert _rows(tmp_path / "pairs.jsonl") == pairs
    assert _rows(tmp_path / "eval.jsonl") == evals


def test_self_rewarding_rounds_end_to_end(tiny_model_dir, tmp_path):
    """configs/self_rewarding.py in 2 rounds: each round's pairs come from its own prompts and
    are ordered by the model's own rating; round 2 starts from round 1's exported policy and
    uses it as its reference (its first DPO loss is log 2); every round is reused on a re-run."""
    config = _tiny(_load(os.path.join(REPO, "configs", "self_rewarding.py")), tiny_model_dir)
    config.rounds, config.export = 2, True
    online_dpo.run(config, str(tmp_path))
    pairs = [_rows(tmp_path / f"round_{k}" / "pairs.jsonl") for k in (1, 2)]
    assert [len(p) for p in pairs] == [4, 4]
    assert not {p["prompt"] for p in pairs[0]} & {p["prompt"] for p in pairs[1]}
    for round_pairs in pairs:
        assert all(1 <= p["rejected_reward"] <= p["chosen_reward"] <= 5 for p in round_pairs)
        assert all(-1 <= p["chosen_true_reward"] <= 1 for p in round_pairs)
    for k in (1, 2):
        stats = json.loads((tmp_path / f"round_{k}" / "self_judge.json").read_text())
        assert stats["pairs_made"] == 4 and 0 <= stats["agreement"] <= 1
        assert stats["agreement_ci95_low"] <= stats["agreement"] <= stats["agreement_ci95_high"]
    with open(tmp_path / "round_2" / "train" / "config.json") as f:
        assert json.load(f)["model"]["path"] == str(tmp_path / "round_1" / "train" / "export")
    first = next(r for r in _rows(tmp_path / "round_2" / "train" / "metrics.jsonl")
                 if "train/loss" in r)
    assert abs(first["train/loss"] - np.log(2)) < 1e-5, first
    evals = _rows(tmp_path / "eval.jsonl")
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert evals[-1]["kl"] != 0.0  # judged against the initial model, not round 2's start
    online_dpo.run(config, str(tmp_path))
    assert [_rows(tmp_path / f"round_{k}" / "pairs.jsonl") for k in (1, 2)] == pairs
    assert _rows(tmp_path / "eval.jsonl") == evals
