"""Train / held-out selection from `config.data`, on small synthetic files and the embedded data."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

from alignjax import data
from alignjax.data import embedded, records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name: str = "sft"):
    """`configs/<name>.py`'s config (the real keys and defaults)."""
    spec = importlib.util.spec_from_file_location("cfg", os.path.join(REPO, "configs",
                                                                      f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, REPO)
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(REPO)
    return mod.get_config()


def _pairs_file(path, n: int = 10) -> str:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"})
                    + "\n")
    return str(path)


def _preference_config(train: str, **data_fields):
    config = _config("sft")
    config.data.train = train
    config.data.format = "preference"
    for k, v in data_fields.items():
        setattr(config.data, k, v)
    return config


def test_last_holdout_and_train_size(tmp_path):
    config = _preference_config(_pairs_file(tmp_path / "p.jsonl"), eval_size=3, holdout="last",
                                train_size=4)
    train, held_out, counts = data.split_examples(config, str(tmp_path))
    assert [e.chosen for e in train] == [f"good {i}" for i in range(4)]
    assert [e.chosen for e in held_out] == [f"good {i}" for i in (7, 8, 9)]
    assert counts[records.ROWS] == 10
    # The examples come back as the format parses them: converting is the caller's choice.
    assert all(isinstance(e, records.PairExample) for e in train + held_out)


def test_random_holdout_follows_the_seed(tmp_path):
    config = _preference_config(_pairs_file(tmp_path / "p.jsonl"), eval_size=3, holdout="random",
                                holdout_seed=5, train_size=0)
    train, held_out, _ = data.split_examples(config, str(tmp_path))
    order = np.random.default_rng(5).permutation(10)
    assert [e.chosen for e in train + held_out] == [f"good {i}" for i in order]
    again, _, _ = data.split_examples(config, str(tmp_path))
    assert again == train


def test_eval_file_and_comma_separated_sources(tmp_path):
    a, b = _pairs_file(tmp_path / "a.jsonl", 3), _pairs_file(tmp_path / "b.jsonl", 2)
    config = _preference_config(f"{a},{b}", eval=b, train_size=0)
    train, held_out, counts = data.split_examples(config, str(tmp_path))
    assert len(train) == 5 and len(held_out) == 2
    assert counts[records.ROWS] == 5  # the counts are those of the training sources


def test_shared_prefix_is_the_shared_data_dir(tmp_path, monkeypatch):
    _pairs_file(tmp_path / "p.jsonl")
    monkeypatch.setenv("ALIGNJAX_SHARED_DATA", str(tmp_path))
    assert data.resolve_sources("shared:p.jsonl", "train") == [str(tmp_path / "p.jsonl")]
    assert data.resolve_sources(["hf:Anthropic/hh-rlhf"], "eval") == ["hf:Anthropic/hh-rlhf"]


@pytest.mark.parametrize("fields, error, match", [
    ({"eval_size": 10}, ValueError, r"config\.data\.eval_size=10 leaves no training examples"),
    ({"eval_size": 2, "holdout": "first"}, ValueError, r"config\.data\.holdout='first'"),
    ({"eval": "nowhere.jsonl"}, FileNotFoundError, r"config\.data\.eval: .*nowhere\.jsonl"),
])
def test_bad_settings_name_the_key(tmp_path, fields, error, match):
    config = _preference_config(_pairs_file(tmp_path / "p.jsonl"), **fields)
    with pytest.raises(error, match=match):
        data.split_examples(config, str(tmp_path))


def test_missing_train_file_names_the_key(tmp_path):
    config = _preference_config(str(tmp_path / "nowhere.jsonl"))
    with pytest.raises(FileNotFoundError, match=r"config\.data\.train: .*nowhere\.jsonl"):
        data.split_examples(config, str(tmp_path))


def test_embedded_quickstart_is_written_into_the_workdir(tmp_path):
    config = _config("quickstart")
    train, held_out, _ = data.split_examples(config, str(tmp_path))
    assert os.path.isfile(tmp_path / "quickstart.jsonl")
    assert len(train) == len(embedded.PAIRS) - 4 and len(held_out) == 4
    assert held_out[0].messages[0]["content"] == embedded.PAIRS[-4][0]
    assert all(isinstance(e, records.SFTExample) for e in train)


def test_as_sft_trains_the_chosen_response():
    pair = records.PairExample(records.user_prompt("2+2?"), "4", "5", origin="f:1")
    sft = records.SFTExample(({"role": "user", "content": "hi"},
                              {"role": "assistant", "content": "hello"}))
    converted, kept = data.as_sft([pair, sft])
    assert converted == records.SFTExample(({"role": "user", "content": "2+2?"},
                                            {"role": "assistant", "content": "4"}), origin="f:1")
    assert kept is sft


def test_tokenize_kwargs():
    config = _config("quickstart")
    assert data.tokenize_kwargs(config) == {"max_length": 64, "truncation": "keep_end",
                                            "max_prompt_length": None, "template": "chat"}
    config = _config("sft")
    assert data.tokenize_kwargs(config)["max_prompt_length"] == config.data.max_prompt_length > 0
