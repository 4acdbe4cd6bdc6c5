"""Chat-template tokenization, trained-token masks and truncation policies."""

from __future__ import annotations

import numpy as np
import pytest

from alignjax import data
from alignjax.data import records as R
from alignjax.data.truncation import Kept, kept_lengths

USER = {"role": "user", "content": "Name a colour."}
CONVERSATION = (
    USER,
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Green, like grass."},
)


@pytest.mark.parametrize(
    ("policy", "prompt", "responses", "expected"),
    [
        ("drop", 10, [5], Kept(10, (5,))),  # fits: unchanged under every policy
        ("drop", 10, [11], None),
        ("cut_response", 10, [11, 3], Kept(10, (10, 3))),
        ("cut_response", 20, [3], None),  # the prompt alone fills max_length
        ("keep_end", 14, [8], Kept(12, (8,))),  # cut the prompt only as much as needed
        ("keep_end", 16, [30], Kept(10, (10,))),  # ... but keep max_length // 2 of it
        ("keep_end", 4, [30], Kept(4, (16,))),  # a short prompt is kept whole
        ("keep_end", 30, [], Kept(20, ())),  # prompts only: keep the end
        ("cut_response", 30, [], None),
    ],
)
def test_truncation_policies(policy, prompt, responses, expected):
    assert kept_lengths(prompt, responses, max_length=20, policy=policy) == expected


def test_keep_end_respects_max_prompt_length():
    kept = kept_lengths(16, [30], max_length=20, policy="keep_end", max_prompt_length=4)
    assert kept == Kept(4, (16,))


def test_multi_turn_sft_trains_every_assistant_turn(smollm2_tokenizer):
    tok = smollm2_tokenizer
    td = data.tokenize([data.SFTExample(CONVERSATION)], tok, max_length=512)
    row = td.examples[0]
    ids, mask = row["input_ids"], row["loss_mask"].astype(bool)
    print("\nSFT chat messages (trained runs in [[ ]]):")
    print(
        "".join(
            f"[[{tok.decode([t])}]]" if m else tok.decode([t]) for t, m in zip(ids, mask)
        ).replace("]][[", "")
    )
    # The whole sequence is exactly the template's rendering (which ends with "<|im_end|>\n").
    full = tok.apply_chat_template(list(CONVERSATION), tokenize=False)
    assert tok.decode(ids) == full.removesuffix("\n")
    assert tok.decode(ids[mask]) == "Blue.<|im_end|>Green, like grass.<|im_end|>"
    # Each trained run is one assistant content + its EOS.
    runs = np.split(ids[mask], np.flatnonzero(np.diff(np.flatnonzero(mask)) > 1) + 1)
    assert [tok.decode(r) for r in runs] == ["Blue.<|im_end|>", "Green, like grass.<|im_end|>"]


def test_single_turn_trains_response_and_eos_only(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ex = data.SFTExample((USER, {"role": "assistant", "content": "Red."}))
    row = data.tokenize([ex], tok, max_length=512).examples[0]
    prompt = tok.apply_chat_template([USER], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert not row["loss_mask"][:n_prompt].any() and row["loss_mask"][n_prompt:].all()
    assert row["input_ids"][-1] == tok.eos_token_id


def test_truncation_counts_and_kept_spans(smollm2_tokenizer):
    tok = smollm2_tokenizer
    long_answer = " ".join(["word"] * 200)
    examples = [
        data.PairExample(R.user_prompt("Say words."), long_answer, "No."),
        data.PairExample(R.user_prompt("Hi"), "Hello.", "Hey."),
    ]
    for policy, dropped in (("drop", 1), ("cut_response", 0), ("keep_end", 0)):
        td = data.tokenize(examples, tok, max_length=64, truncation=policy)
        assert td.counts[R.DROPPED_TOO_LONG] == dropped
        assert td.counts[R.TOKENIZED] == 2 - dropped
        assert all(len(r["chosen_input_ids"]) <= 64 for r in td.examples)
    td = data.tokenize(examples, tok, max_length=64, truncation="cut_response")
    assert td.counts[R.TRUNCATED_RESPONSE] == 1 and td.counts[R.TRUNCATED_PROMPT] == 0
    cut = td.examples[0]
    assert len(cut["chosen_input_ids"]) == 64
    assert cut["chosen_input_ids"][-1] != tok.eos_token_id  # a cut response has no EOS
    assert tok.decode(cut["rejected_input_ids"][cut["rejected_loss_mask"] == 1]) == (
        "No.<|im_end|>"
    )
    td = data.tokenize(examples, tok, max_length=64, truncation="keep_end", max_prompt_length=8)
    assert td.counts[R.TRUNCATED_PROMPT] == 1 and td.counts[R.TRUNCATED_RESPONSE] == 1
    row = td.examples[0]
    assert int(np.argmax(row["chosen_loss_mask"])) == 8  # 8 prompt tokens kept, from its end
    assert row["chosen_loss_mask"][0] == 0


def test_keep_end_on_multi_turn_keeps_the_last_turn(smollm2_tokenizer):
    tok = smollm2_tokenizer
    long_turns = (USER, {"role": "assistant", "content": "x " * 100}, *CONVERSATION[2:])
    full = data.tokenize([data.SFTExample(long_turns)], tok, max_length=1024).examples[0]
    n = len(full["input_ids"])
    row = data.tokenize(
        [data.SFTExample(long_turns)], tok, max_length=n - 10, truncation="keep_end"
    ).examples[0]
    np.testing.assert_array_equal(row["input_ids"], full["input_ids"][10:])
    np.testing.assert_array_equal(row["loss_mask"][1:], full["loss_mask"][11:])
    assert row["loss_mask"][0] == 0


def test_a_tokenizer_without_chat_template_is_refused(smollm2_tokenizer):
    class NoTemplate:
        chat_template = None
        name_or_path = "base-model"

    with pytest.raises(ValueError, match="'base-model' has no chat template"):
        data.ChatRenderer(NoTemplate())
    # An explicit template works with any tokenizer.
    template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    row = data.tokenize(
        [data.SFTExample((USER, {"role": "assistant", "content": "Red."}))],
        smollm2_tokenizer,
        max_length=64,
        chat_template=template,
    ).examples[0]
    assert smollm2_tokenizer.decode(row["input_ids"]) == "user: Name a colour.\nassistant: Red." + (
        smollm2_tokenizer.eos_token
    )


def test_a_template_that_rewrites_content_is_refused(smollm2_tokenizer):
    template = "{% for m in messages %}{{ m['content'] | trim }}{% endfor %}"
    ex = data.SFTExample((USER, {"role": "assistant", "content": " padded "}), origin="f.json:3")
    with pytest.raises(ValueError, match="f.json:3: chat template .* turn 1"):
        data.tokenize([ex], smollm2_tokenizer, max_length=64, chat_template=template)


def test_mixed_kinds_are_refused(smollm2_tokenizer):
    with pytest.raises(ValueError, match="one kind"):
        data.tokenize(
            [
                data.PromptExample(R.user_prompt("a")),
                data.SFTExample((USER, {"role": "assistant", "content": "b"})),
            ],
            smollm2_tokenizer,
            max_length=64,
        )


def test_unpaired_kl_sequences_follow_the_kept_prompt(smollm2_tokenizer):
    tok = smollm2_tokenizer
    long_answer = " ".join(["word"] * 200)
    pairs = [
        data.PairExample(R.user_prompt("Say words."), long_answer, "No."),
        data.PairExample(R.user_prompt("Hi"), "Hello.", "Hey."),
    ]
    kw = {"max_length": 64, "truncation": "keep_end"}
    plain = data.tokenize(data.unpair(pairs), tok, **kw)
    with_kl = data.tokenize(data.as_unpaired(pairs), tok, **kw)
    assert with_kl.counts == plain.counts  # the KL sequence neither truncates nor drops
    for a, b in zip(plain.examples, with_kl.examples):
        assert set(b) == set(a) | {"kl_input_ids", "kl_loss_mask"}
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        n_prompt = int(np.argmax(b["loss_mask"]))
        np.testing.assert_array_equal(b["kl_input_ids"][:n_prompt], b["input_ids"][:n_prompt])
        assert not b["kl_loss_mask"][:n_prompt].any() and b["kl_loss_mask"][n_prompt:].all()
        assert len(b["kl_input_ids"]) <= 64
    rows = with_kl.examples
    assert tok.decode(rows[0]["kl_input_ids"][rows[0]["kl_loss_mask"] == 1]) == "Hello.<|im_end|>"
    assert len(rows[2]["kl_input_ids"]) == 64  # "Hi" with the 200 words, cut to fit
    batch = data.COLLATORS["unpaired"]([*rows, None], 64, with_kl.pad_id)
    assert batch["kl_input_ids"].shape == batch["input_ids"].shape == (5, 64)
    np.testing.assert_array_equal(batch["kl_attention_mask"].sum(1),
                                  [len(r["kl_input_ids"]) for r in rows] + [0])
    np.testing.assert_array_equal(batch["kl_loss_mask"][:4, :len(rows[1]["kl_input_ids"])][1],
                                  rows[1]["kl_loss_mask"])
    assert data.collate.sequence_length("unpaired", rows[2]) == 64
    with pytest.raises(ValueError, match="all or none carry a kl_completion"):
        data.tokenize([*data.unpair(pairs[:1]), *data.as_unpaired(pairs)[2:]], tok, **kw)
