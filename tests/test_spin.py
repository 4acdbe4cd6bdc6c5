"""The SPIN job on a tiny model: two rounds, each round's data in the workdir, per-round resume."""

import json
import os

import numpy as np
import pytest
from test_train import REPO, _load, read_metrics

from alignjax import data as data_lib
from alignjax import spin


def _tiny(model_dir, rounds):
    config = _load(os.path.join(REPO, "configs", "spin.py"))
    config.model.path = model_dir
    config.rounds = rounds
    config.spin.prompts, config.spin.sample_batch = 6, 6
    config.spin.max_new_tokens, config.spin.prompt_buckets = 8, (512,)
    config.steps, config.batch_size, config.eval_batch_size = 2, 4, 2
    config.log_every = config.eval_every = config.checkpoint_every = 1
    config.data.eval_size = 2
    config.data.max_length, config.data.max_prompt_length, config.data.buckets = 256, 128, (256,)
    config.export = True
    return config


def test_sft_answers_of_pairs_and_conversations():
    pair = data_lib.PairExample([{"role": "user", "content": "q"}], "good", "bad", "f:1")
    sft = data_lib.SFTExample([{"role": "user", "content": "q"},
                               {"role": "assistant", "content": "a"}], "f:2")
    assert spin.sft_answers([pair, sft]) == ["good", "a"]
    samples = [{"example_id": 0, "prompt": [{"role": "user", "content": "q"}],
                "response": "mine"}, {"example_id": 1, "prompt": [], "response": "a"}]
    assert spin.make_pairs(samples, ["good", "a"]) == [
        {"prompt": [{"role": "user", "content": "q"}], "chosen": "good", "rejected": "mine"}]


@pytest.mark.slow
def test_two_rounds_then_resume_per_round(tiny_model_dir, shared_data, tmp_path):
    out = spin.run(_tiny(tiny_model_dir, rounds=1), str(tmp_path))
    r1 = tmp_path / "round_1"
    pairs1 = (r1 / "pairs.jsonl").read_text()
    stamp = {name: os.path.getmtime(r1 / name) for name in ("pairs.jsonl", "round.json")}
    assert out["rounds"][0]["pairs"] == len(pairs1.splitlines()) > 0
    # chosen: the SFT answers of the data; rejected: the opponent's samples, written beside
    examples, _ = data_lib.load_examples(data_lib.resolve_sources(
        _tiny(tiny_model_dir, 1).data.train, "train"), "hh_rlhf")
    answers = spin.sft_answers(examples[:6])
    samples = [json.loads(x) for x in (r1 / "opponent" / "samples.jsonl").read_text().splitlines()]
    for line, s in zip(pairs1.splitlines(), samples, strict=True):
        pair = json.loads(line)
        assert pair["chosen"] == answers[s["example_id"]]
        assert pair["rejected"] == s["response"] and pair["prompt"] == s["prompt"]

    out = spin.run(_tiny(tiny_model_dir, rounds=2), str(tmp_path))
    assert (r1 / "pairs.jsonl").read_text() == pairs1  # round 1 is not run again
    assert stamp == {name: os.path.getmtime(r1 / name) for name in stamp}
    r2 = tmp_path / "round_2"
    assert out["rounds"][1]["opponent"] == str(r1 / "train" / "export")
    assert (r2 / "pairs.jsonl").read_text() != pairs1  # the new opponent answers otherwise
    # round 2 starts from its opponent, which is its reference: the first step is at log 2
    first = read_metrics(str(r2 / "train"))[0]
    assert first["step"] == 1
    np.testing.assert_allclose(first["train/loss"], np.log(2), atol=1e-5)
    # an unfinished round (no round.json) reuses its pairs and its finished training
    os.remove(r2 / "round.json")
    again = spin.run(_tiny(tiny_model_dir, rounds=2), str(tmp_path))
    assert again["rounds"][1]["pairs"] == out["rounds"][1]["pairs"]
    assert again["rounds"][1]["train/loss"] == out["rounds"][1]["train/loss"]
