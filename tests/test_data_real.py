"""The real files of shared/data: row counts, and each format tokenized with its trained tokens.

Counts come from shared/data/README.md. For each format one example is printed with its trained
tokens between [[ ]] (run `pytest -s` to see them), and for every untruncated example of a file
the trained tokens must decode to exactly the response (or correction) text followed by EOS.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from alignjax import data
from alignjax.data import records as R
from alignjax.data.chat import ALIGNER_INSTRUCTION

HH = "hh-rlhf/{}/test.jsonl.gz"
ALIGNER_GPT4 = "aligner/alpaca_eval_aligner-2b_corrects_gpt-4-turbo-2024-04-09.json"
ANNOTATIONS = "alpaca_eval/annotations_gpt4judge_text_davinci_003_vs_alpaca-7b.json"

# (file, format, rows, examples kept, other expected counts)
COUNTS = [
    (HH.format("harmless-base"), "hh_rlhf", 2312, 2312, {R.HH_COMMON_PREFIX: 5}),
    (
        HH.format("helpful-base"),
        "hh_rlhf",
        2354,
        2352,
        {R.IDENTICAL_PAIRS: 2, R.HH_COMMON_PREFIX: 9},
    ),
    (HH.format("helpful-online"), "hh_rlhf", 1137, 1135, {R.IDENTICAL_PAIRS: 2}),
    (
        HH.format("helpful-rejection-sampled"),
        "hh_rlhf",
        2749,
        2717,
        {R.IDENTICAL_PAIRS: 32, R.HH_COMMON_PREFIX: 3},
    ),
    ("alpaca_eval/alpaca_eval_reference_text_davinci_003.json", "alpaca_eval", 805, 805, {}),
    ("alpaca_eval/alpaca_eval_reference_gpt4_1106_preview.json", "alpaca_eval", 805, 805, {}),
    (ANNOTATIONS, "alpaca_eval_annotations", 805, 789, {R.IDENTICAL_PAIRS: 16}),
    (ALIGNER_GPT4, "alpaca_eval_aligner", 805, 805, {}),
    (
        "aligner/alpaca_eval_aligner-2b_corrects_claude-3-opus-20240229.json",
        "alpaca_eval_aligner",
        805,
        805,
        {},
    ),
    (
        "aligner/alpaca_eval_aligner-2b_corrects_qwen1.5-72b-chat.json",
        "alpaca_eval_aligner",
        805,
        805,
        {},
    ),
    ("aligner/aligner_template-dataset.json", "aligner", 2, 2, {}),
    ("pku/pku-saferlhf_sample32.json", "pku_saferlhf", 32, 32, {}),
    ("pku/beavertails-evaluation.json", "prompt", 700, 700, {}),
]


@pytest.mark.parametrize(
    ("name", "fmt", "rows", "kept", "extra"), COUNTS, ids=[os.path.basename(c[0]) for c in COUNTS]
)
def test_row_counts(shared_data, name, fmt, rows, kept, extra):
    examples, counts = data.load_examples(os.path.join(shared_data, name), fmt)
    assert counts[R.ROWS] == rows
    assert len(examples) == counts[R.EXAMPLES] == kept
    for key, value in extra.items():
        assert counts[key] == value, key
    assert counts[R.MALFORMED_SKIPPED] == 0


def test_hh_rlhf_test_splits_hold_36_identical_pairs(shared_data):
    paths = [
        os.path.join(shared_data, HH.format(s))
        for s in ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
    ]
    examples, counts = data.load_examples(paths, "hh_rlhf")
    assert counts[R.ROWS] == 8552
    assert counts[R.IDENTICAL_PAIRS] == 36
    assert len(examples) == 8516
    assert all(ex.chosen != ex.rejected for ex in examples)


def test_alpaca_eval_judge_preferences(shared_data):
    examples, _ = data.load_examples(
        os.path.join(shared_data, ANNOTATIONS), "alpaca_eval_annotations"
    )
    import json

    with open(os.path.join(shared_data, ANNOTATIONS)) as f:
        rows = [r for r in json.load(f) if r["preference"] != 0]
    assert len(rows) == len(examples) == 789
    for row, ex in zip(rows, examples):
        winner = row["output_1"] if row["preference"] == 1 else row["output_2"]
        assert ex.chosen == winner


def marked(tok, ids: np.ndarray, mask: np.ndarray) -> str:
    """The decoded sequence with trained runs between [[ ]]."""
    cuts = [0, *np.flatnonzero(np.diff(mask)) + 1, len(ids)]
    parts = [tok.decode(ids[a:b]) for a, b in itertools.pairwise(cuts)]
    return "".join(f"[[{p}]]" if mask[a] else p for p, a in zip(parts, cuts[:-1]))


def trained_text(tok, ids: np.ndarray, mask: np.ndarray) -> str:
    return tok.decode(ids[mask.astype(bool)])


def _load(shared_data, name, fmt):
    examples, _ = data.load_examples(os.path.join(shared_data, name), fmt)
    return examples


def test_sft_prompt_response(shared_data, smollm2_tokenizer):
    tok = smollm2_tokenizer
    examples = _load(
        shared_data, "alpaca_eval/alpaca_eval_reference_text_davinci_003.json", "alpaca_eval"
    )
    td = data.tokenize(examples, tok, max_length=1024, truncation="drop")
    assert td.kind == "sft" and len(td) == 805 - td.counts[R.DROPPED_TOO_LONG]
    row = td.examples[0]
    print("\nSFT (AlpacaEval reference):\n" + marked(tok, row["input_ids"], row["loss_mask"]))
    for row in td.examples:
        response = examples[row["example_id"]].messages[-1]["content"]
        assert trained_text(tok, row["input_ids"], row["loss_mask"]) == response + tok.eos_token
        assert row["loss_mask"][0] == 0


def test_preference_pairs_hh_rlhf_multi_turn(shared_data, smollm2_tokenizer):
    tok = smollm2_tokenizer
    examples = _load(shared_data, HH.format("helpful-online"), "hh_rlhf")
    td = data.tokenize(examples, tok, max_length=4096, truncation="drop")
    multi = next(r for r in td.examples if len(examples[r["example_id"]].prompt) >= 3)
    ex = examples[multi["example_id"]]
    print(
        f"\nHH-RLHF pair ({ex.origin}), chosen:\n"
        + marked(tok, multi["chosen_input_ids"], multi["chosen_loss_mask"])
        + "\nrejected response: "
        + marked(tok, multi["rejected_input_ids"], multi["rejected_loss_mask"]).split("[[", 1)[1]
    )
    prompt_text = tok.decode(multi["chosen_input_ids"][: np.argmax(multi["chosen_loss_mask"])])
    assert prompt_text.count("<|im_start|>user\n") == sum(m["role"] == "user" for m in ex.prompt)
    assert prompt_text.count("<|im_start|>assistant\n") == len(ex.prompt) // 2 + 1
    for row in td.examples:
        ex = examples[row["example_id"]]
        c_ids, c_mask = row["chosen_input_ids"], row["chosen_loss_mask"]
        r_ids, r_mask = row["rejected_input_ids"], row["rejected_loss_mask"]
        assert trained_text(tok, c_ids, c_mask) == ex.chosen + tok.eos_token
        assert trained_text(tok, r_ids, r_mask) == ex.rejected + tok.eos_token
        start = int(np.argmax(c_mask))
        assert start == int(np.argmax(r_mask))
        np.testing.assert_array_equal(c_ids[:start], r_ids[:start])  # one shared prompt


def test_preference_pairs_pku_saferlhf(shared_data, smollm2_tokenizer):
    tok = smollm2_tokenizer
    examples = _load(shared_data, "pku/pku-saferlhf_sample32.json", "pku_saferlhf")
    td = data.tokenize(examples, tok, max_length=2048, truncation="drop")
    assert len(td) == 32
    row = td.examples[0]
    print(
        "\nPKU-SafeRLHF pair, chosen:\n"
        + marked(tok, row["chosen_input_ids"], row["chosen_loss_mask"])
    )
    for row in td.examples:
        ex = examples[row["example_id"]]
        assert trained_text(tok, row["chosen_input_ids"], row["chosen_loss_mask"]) == (
            ex.chosen + tok.eos_token
        )
        assert trained_text(tok, row["rejected_input_ids"], row["rejected_loss_mask"]) == (
            ex.rejected + tok.eos_token
        )


def test_unpaired_kto_from_hh_pairs(shared_data, smollm2_tokenizer):
    tok = smollm2_tokenizer
    pairs = _load(shared_data, HH.format("helpful-base"), "hh_rlhf")[:50]
    examples = data.unpair(pairs)
    td = data.tokenize(examples, tok, max_length=4096, truncation="drop")
    assert td.kind == "unpaired" and len(td) == 100
    row = td.examples[1]
    print(
        f"\nKTO example (label={row['label']}):\n" + marked(tok, row["input_ids"], row["loss_mask"])
    )
    for row in td.examples:
        ex = examples[row["example_id"]]
        assert row["label"] == ex.label == (row["example_id"] % 2 == 0)
        assert trained_text(tok, row["input_ids"], row["loss_mask"]) == (
            ex.completion + tok.eos_token
        )


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("aligner/aligner_template-dataset.json", "aligner"), (ALIGNER_GPT4, "alpaca_eval_aligner")],
)
def test_corrections(shared_data, smollm2_tokenizer, name, fmt):
    tok = smollm2_tokenizer
    examples = _load(shared_data, name, fmt)
    td = data.tokenize(examples, tok, max_length=4096, truncation="drop")
    assert td.kind == "correction"
    row = td.examples[0]
    print(f"\nAligner correction ({fmt}):\n" + marked(tok, row["input_ids"], row["loss_mask"]))
    for row in td.examples:
        ex = examples[row["example_id"]]
        ids, mask = row["input_ids"], row["loss_mask"]
        start = row["correction_start"]
        assert start == int(np.argmax(mask)) and mask[start:].all() and not mask[:start].any()
        assert tok.decode(ids[mask.astype(bool)]) == ex.correction + tok.eos_token
        instruction = ALIGNER_INSTRUCTION.format(question=ex.question, answer=ex.answer)
        assert tok.decode(ids[:start]) == (
            tok.apply_chat_template(
                [{"role": "user", "content": instruction}],
                tokenize=False,
                add_generation_prompt=True,
            )
        )


def test_prompts_only(shared_data, smollm2_tokenizer):
    tok = smollm2_tokenizer
    examples = _load(shared_data, "pku/beavertails-evaluation.json", "prompt")
    td = data.tokenize(examples, tok, max_length=256)
    assert td.kind == "prompt" and len(td) == 700
    row = td.examples[0]
    text = tok.decode(row["input_ids"])
    print("\nPrompt (BeaverTails):\n" + text)
    assert "loss_mask" not in row
    assert text.endswith(examples[0].prompt[0]["content"] + "<|im_end|>\n<|im_start|>assistant\n")
