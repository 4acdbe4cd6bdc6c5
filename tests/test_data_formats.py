"""Readers and record formats on small synthetic files: fields, errors, counts."""

from __future__ import annotations

import gzip
import json

import pytest

from alignjax.data import formats, hh_rlhf, readers, records
from alignjax.data.load import load_examples
from alignjax.data.records import MalformedRowError


def _write_jsonl(path, rows, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return str(path)


PAIRS = [
    {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Paris"},
    {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
]


@pytest.mark.parametrize("suffix", ["jsonl", "jsonl.gz", "json", "parquet"])
def test_every_file_type_gives_the_same_examples(tmp_path, suffix):
    path = tmp_path / f"pairs.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(PAIRS, indent=2))
    elif suffix == "parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(PAIRS), path)
    else:
        _write_jsonl(path, PAIRS, gz=suffix.endswith("gz"))
    examples, counts = load_examples(str(path), "preference")
    assert [(e.prompt[0]["content"], e.chosen, e.rejected) for e in examples] == [
        ("2+2?", "4", "5"),
        ("Hi", "Hello!", "Go away."),
    ]
    assert counts[records.ROWS] == 3
    assert counts[records.IDENTICAL_PAIRS] == 1
    assert counts[records.EXAMPLES] == 2


def test_json_array_locations_are_real_line_numbers(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(PAIRS, indent=2))  # each object spans 5 lines, after "[" on line 1
    locations = [loc for loc, _ in readers.read_rows(str(path))]
    assert locations == [f"{path}:2", f"{path}:7", f"{path}:12"]
    lines = path.read_text().splitlines()
    assert all(lines[int(loc.rsplit(":", 1)[1]) - 1].strip() == "{" for loc in locations)


def test_missing_field_names_file_line_and_field(tmp_path):
    rows = [PAIRS[0], {"prompt": "x", "chosen": "y"}, PAIRS[2]]
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(MalformedRowError, match=r"bad\.jsonl:2: field 'rejected': missing") as e:
        load_examples(path, "preference")
    assert e.value.field == "rejected"
    assert e.value.location == f"{path}:2"


def test_wrong_type_and_renamed_field_are_named(tmp_path):
    path = _write_jsonl(
        tmp_path / "c.jsonl", [{"instruction": "q", "original_output": 3, "output": "c"}]
    )
    with pytest.raises(
        MalformedRowError, match=r"c\.jsonl:1: field 'original_output': expected str"
    ):
        load_examples(path, "alpaca_eval_aligner")


def test_malformed_rows_skipped_and_counted(tmp_path):
    rows = [PAIRS[0], {"prompt": "x"}, "not an object", PAIRS[2]]
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    examples, counts = load_examples(path, "preference", on_malformed="skip")
    assert len(examples) == 2
    assert counts[records.MALFORMED_SKIPPED] == 2
    assert counts[records.ROWS] == 4


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"broken\.jsonl:2: invalid JSON"):
        list(readers.read_rows(str(path)))


def test_field_overrides_pick_another_label(tmp_path):
    row = {
        "prompt": "p",
        "response_0": "a",
        "response_1": "b",
        "better_response_id": 0,
        "safer_response_id": 1,
    }
    path = _write_jsonl(tmp_path / "pku.jsonl", [row])
    (better,), _ = load_examples(path, "pku_saferlhf")
    (safer,), _ = load_examples(path, "pku_saferlhf", fields={"preferred_id": "safer_response_id"})
    assert (better.chosen, better.rejected) == ("a", "b")
    assert (safer.chosen, safer.rejected) == ("b", "a")


def test_conversational_preference_with_implicit_prompt():
    user = {"role": "user", "content": "Hi"}
    row = {
        "chosen": [user, {"role": "assistant", "content": "Hello"}],
        "rejected": [user, {"role": "assistant", "content": "Bye"}],
    }
    (ex,), _ = formats.parse_rows([("mem:1", row)], "preference")
    assert ex.prompt == (user,)
    assert (ex.chosen, ex.rejected) == ("Hello", "Bye")


def test_sft_messages_must_end_with_assistant():
    row = {"messages": [{"role": "user", "content": "Hi"}]}
    with pytest.raises(MalformedRowError, match="mem:7: field 'messages': the last message"):
        formats.parse_rows([("mem:7", row)], "sft")


def test_unpaired_and_prompt_formats():
    rows = [
        ("m:1", {"prompt": "p", "completion": "c", "label": True}),
        ("m:2", {"prompt": "p", "completion": "d", "label": 0}),
    ]
    examples, _ = formats.parse_rows(rows, "unpaired")
    assert [(e.completion, e.label) for e in examples] == [("c", True), ("d", False)]
    with pytest.raises(MalformedRowError, match="field 'label'"):
        formats.parse_rows([("m:3", {"prompt": "p", "completion": "c", "label": 2})], "unpaired")
    (p,), _ = formats.parse_rows([("m:4", {"prompt": "Why?"})], "prompt")
    assert p.prompt == ({"role": "user", "content": "Why?"},)


def test_unpair_and_prompts_of():
    pair = records.PairExample(records.user_prompt("q"), "good", "bad", "x:1")
    assert [(u.completion, u.label) for u in records.unpair([pair])] == [
        ("good", True),
        ("bad", False),
    ]
    assert records.prompts_of([pair])[0].prompt == pair.prompt


def test_as_unpaired_gives_each_example_another_prompts_completion():
    pairs = [records.PairExample(records.user_prompt(f"q{i}"), f"good{i}", f"bad{i}", f"x:{i}")
             for i in range(3)]
    out = records.as_unpaired(pairs)
    assert [(u.prompt[0]["content"], u.completion, u.label, u.kl_completion) for u in out] == [
        ("q0", "good0", True, "good1"),
        ("q0", "bad0", False, "bad1"),
        ("q1", "good1", True, "good2"),
        ("q1", "bad1", False, "bad2"),
        ("q2", "good2", True, "good0"),
        ("q2", "bad2", False, "bad0"),
    ]  # a shift by 2: the halves of a pair share a prompt; the KL set is the completions
    assert records.as_unpaired(pairs) == out  # deterministic: cacheable per example
    single = [records.UnpairedExample(records.user_prompt(q), c, True) for q, c in
              [("a", "1"), ("b", "2"), ("c", "3")]]
    assert [u.kl_completion for u in records.as_unpaired(single)] == ["2", "3", "1"]
    with pytest.raises(ValueError, match="another prompt"):
        records.as_unpaired(pairs[:1])  # one prompt: no mismatched completion exists
    with pytest.raises(TypeError, match=r"x:0: KTO needs .*config\.data\.format.*SFTExample"):
        records.as_unpaired([records.SFTExample(({"role": "assistant", "content": "a"},), "x:0")])


def test_hh_transcript_split_and_messages():
    prompt = "\n\nHuman: Hi\n\nAssistant: Hello, how can I help?\n\nHuman: Tell me a joke."
    chosen = prompt + "\n\nAssistant: Why did the chicken cross the road?"
    rejected = prompt + "\n\nAssistant: No."
    shared, c, r, fallback = hh_rlhf.split_pair(chosen, rejected)
    assert (shared, c, r, fallback) == (prompt, "Why did the chicken cross the road?", "No.", False)
    assert hh_rlhf.transcript_messages(shared) == (
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    )


def test_hh_response_with_a_made_up_turn_falls_back_to_the_common_prefix():
    prompt = "\n\nHuman: Are drag queens men?"
    chosen = prompt + "\n\nAssistant: Yes.  Human: Really?\n\nAssistant: Really."
    rejected = prompt + "\n\nAssistant: No."
    shared, c, r, fallback = hh_rlhf.split_pair(chosen, rejected)
    assert fallback and shared == prompt
    assert c == "Yes.  Human: Really?\n\nAssistant: Really."
    assert r == "No."


def test_hh_transcript_without_human_turn_is_malformed():
    row = {"chosen": "Assistant: hi", "rejected": "Assistant: ho"}
    with pytest.raises(MalformedRowError, match="hh.jsonl:3: field 'chosen'"):
        formats.parse_rows([("hh.jsonl:3", row)], "hh_rlhf")


def test_shared_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ALIGNJAX_SHARED_DATA", str(tmp_path))
    assert readers.shared_data_dir() == str(tmp_path)
    monkeypatch.delenv("ALIGNJAX_SHARED_DATA")
    assert readers.shared_data_dir().endswith("shared/data")


def test_hf_source_goes_through_the_same_mapping(tmp_path):
    """`datasets` reads a local JSON Lines file here (no network); the rows parse identically."""
    path = _write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install datasets"):
            load_examples("hf:json", "preference", split="train", data_files=path)
        return
    hf_examples, hf_counts = load_examples(
        "hf:json", "preference", split="train", data_files=path, cache_dir=str(tmp_path / "cache")
    )
    local_examples, local_counts = load_examples(path, "preference")
    assert [(e.prompt, e.chosen, e.rejected) for e in hf_examples] == [
        (e.prompt, e.chosen, e.rejected) for e in local_examples
    ]
    assert hf_counts == local_counts
    assert hf_examples[0].origin == "hf:json[train] row 0"
