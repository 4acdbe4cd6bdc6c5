"""Weak-to-strong training from an Aligner's corrections (alignjax.aligner_w2s), and the RL
loop's file prompts and export that it uses."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file
from test_aligner_job import _config

from alignjax import aligner_w2s, models
from alignjax.rl import loop


def _questions(path, n: int, field: str = "question", offset: int = 0) -> str:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({field: f"Question {offset + i}: name a colour."}) + "\n")
    return str(path)


def test_rl_prompts_from_a_file(tmp_path):
    config = _config("rloo")
    config.prompts = "file:" + _questions(tmp_path / "p.jsonl", 5, field="prompt")
    config.eval_prompts = 2
    train, held_out = loop.prompts_of(config)
    assert held_out == ["Question 0: name a colour.", "Question 1: name a colour."]
    assert train == [f"Question {i}: name a colour." for i in (2, 3, 4)]
    assert loop.chat_of(config)(train[0]) == [{"role": "user", "content": train[0]}]
    config.eval_prompts = 5
    with pytest.raises(ValueError, match="config.eval_prompts=5"):
        loop.prompts_of(config)
    config.prompts = "prompts.jsonl"
    with pytest.raises(ValueError, match="'file:PATH'"):
        loop.prompts_of(config)


def test_read_questions_keeps_those_that_fit(tmp_path, smollm2_tokenizer):
    config = _config("aligner_w2s")
    spec = config.train_questions
    spec.path = _questions(tmp_path / "q.jsonl", 6)
    with open(spec.path, "a") as f:
        f.write(json.dumps({"question": "long " * 400}) + "\n")
    spec.limit = 0
    assert len(aligner_w2s.read_questions(spec, smollm2_tokenizer, 64)) == 6  # the long one out
    spec.limit = 4
    assert len(aligner_w2s.read_questions(spec, smollm2_tokenizer, 64)) == 4
    with pytest.raises(ValueError, match="no question fits in 5 prompt tokens"):
        aligner_w2s.read_questions(spec, smollm2_tokenizer, 5)


@pytest.mark.slow
def test_w2s_end_to_end_on_a_tiny_model(tiny_model_dir, tmp_path):
    """Every stage on a tiny random model (upstream, Aligner and both judges): labels, SFT, DPO,
    the reward model and RLOO with it, the evaluation and the table."""
    config = _config("aligner_w2s")
    config.model.path = config.aligner_path = tiny_model_dir
    config.judge.reward_models.helpful = config.judge.reward_models.harmless = tiny_model_dir
    config.train_questions.path = _questions(tmp_path / "train.jsonl", 12)
    config.train_questions.limit = 0
    for i, spec in enumerate(config.eval_sets.values()):
        spec.path = _questions(tmp_path / f"eval{i}.jsonl", 3, spec.field, offset=100 * i)
        spec.limit = 0
    config.aligner.max_new_tokens = 6
    config.aligner.prompt_buckets = (64, 128)
    config.aligner.sample_batch = 4
    config.judge.max_length = 64
    for name in ("sft", "dpo", "rm"):
        s = getattr(config, name)
        s.steps, s.checkpoint_every, s.eval_every = 2, 2, 2
        s.data.eval_size, s.data.max_length, s.data.max_prompt_length = 2, 64, 32
        s.data.buckets = (64,)
    config.rlhf.iterations, config.rlhf.eval_prompts = 1, 2
    config.rlhf.prompts_per_iteration, config.rlhf.samples_per_prompt = 2, 2
    config.rlhf.max_new_tokens, config.rlhf.prompt_buckets = 4, (64,)
    work = tmp_path / "w2s"
    summary = aligner_w2s.run(config, str(work))
    labels = [json.loads(line) for line in open(work / "labels.jsonl")]
    assert len(labels) == 12 and summary["labels"]["questions"] == 12
    pairs = [json.loads(line) for line in open(work / "data" / "pairs.jsonl")]
    assert len(pairs) == summary["labels"]["pairs"]
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    for method in ("sft", "dpo", "rlhf"):
        exported = load_file(os.path.join(work, method, "export", "model.safetensors"))
        before = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
        assert any(not np.array_equal(exported[k], before[k]) for k in before), method
    # the RL policy's export loads as a model
    models.load({"path": str(work / "rlhf" / "export")}, None)
    results = summary["results"]
    assert set(results) == {"alpaca_eval_held_out", "beavertails"}
    for per_method in results.values():
        for per_judge in per_method.values():
            assert set(per_judge) == {"helpful", "harmless"}
            for r in per_judge.values():
                assert r["n"] == 3 and r["wins"] + r["ties"] + r["losses"] == 3
    table = aligner_w2s.table(results)
    assert table.count("\n") == 4 and "| RLHF |" in table
    assert json.loads((work / "w2s.json").read_text())["results"] == results
    # a second run finds every stage done
    again = aligner_w2s.run(config, str(work))
    assert again["results"] == results
