"""The Aligner's correction prompt and its loss mask.

The reference here is a transcription of how the authors' training code
(github.com/PKU-Alignment/aligner) builds a correction example: `CorrectionJSONDataset` formats
the instruction, `format_prompt` joins PROMPT_BEGIN, PROMPT_USER and PROMPT_ASSISTANT around it,
`SupervisedDataset.preprocess` appends the correction and the EOS text, tokenizes the whole text
with the tokenizer's special tokens and labels the first len(tokenize(prompt)) tokens -100.
It is checked on the rows of their example file (aligner/template-dataset.json, the same bytes
as aligner_template-dataset.json in the shared data).
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from alignjax import data, losses, models, objectives

IGNORE_INDEX = -100


def _authors_example(tokenizer, row: dict) -> tuple[str, list[int], list[int]]:
    """(text, input_ids, labels) as the authors' SupervisedDataset builds them."""
    # aligner/training/datasets/raw/correction.py
    correction_instruction = "##Question: {question}\n##Answer: {answer}\n##Correction: "
    raw_input = correction_instruction.format(question=row["question"], answer=row["answer"])
    # aligner/training/configs/constants.py and datasets/utils.py: format_prompt
    prompt_begin, prompt_user, prompt_assistant = "BEGINNING OF CONVERSATION: ", "USER: {input} ", \
        "ASSISTANT:"
    buffer = [prompt_begin]
    buffer.extend((prompt_user.format(input=raw_input), prompt_assistant))
    prompt = "".join(buffer)
    # aligner/training/datasets/supervised.py: SupervisedDataset.preprocess
    text = str(prompt) + str(row["correction"]) + tokenizer.eos_token
    input_ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    labels = list(input_ids)
    n_prompt = len(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    labels[:n_prompt] = [IGNORE_INDEX] * n_prompt
    return text, input_ids, labels


@pytest.fixture(scope="module")
def template_rows(shared_data):
    with open(os.path.join(shared_data, "aligner", "aligner_template-dataset.json")) as f:
        return json.load(f)


def _tokenized(tokenizer, rows, template):
    examples = [data.CorrectionExample(r["question"], r["answer"], r["correction"], f"row {i}")
                for i, r in enumerate(rows)]
    return data.tokenize(examples, tokenizer, max_length=4096, template=template)


def test_aligner_template_is_the_authors_text_and_tokens(smollm2_tokenizer, template_rows):
    tok = smollm2_tokenizer
    td = _tokenized(tok, template_rows, "aligner")
    assert len(td) == len(template_rows) == 2
    for row, ex in zip(template_rows, td.examples):
        text, ids, labels = _authors_example(tok, row)
        ours = (data.correction_prompt(tok, row["question"], row["answer"], template="aligner")
                + row["correction"] + tok.eos_token)
        assert ours.encode("utf-8") == text.encode("utf-8")
        np.testing.assert_array_equal(ex["input_ids"], ids)
        np.testing.assert_array_equal(ex["loss_mask"], np.asarray(labels) != IGNORE_INDEX)
        assert ex["correction_start"] == sum(la == IGNORE_INDEX for la in labels)


def test_chat_template_is_not_the_authors_text(smollm2_tokenizer, template_rows):
    # the comparison above tells the two templates apart
    row = template_rows[0]
    text, ids, _ = _authors_example(smollm2_tokenizer, row)
    chat = data.correction_prompt(smollm2_tokenizer, row["question"], row["answer"])
    assert chat + row["correction"] + smollm2_tokenizer.eos_token != text
    assert chat.startswith("<|im_start|>system") and "Question-Answer pair" in chat
    td = _tokenized(smollm2_tokenizer, template_rows[:1], "chat")
    assert list(td.examples[0]["input_ids"]) != ids


def test_unknown_template_names_the_config_key():
    from ml_collections import ConfigDict

    config = ConfigDict({"data": {"max_length": 8, "truncation": "keep_end",
                                  "max_prompt_length": 0, "template": "alpaca"}})
    with pytest.raises(ValueError, match=r"config\.data\.template='alpaca'"):
        data.tokenize_kwargs(config)


def test_aligner_loss_trains_only_the_correction_and_eos(smollm2_tokenizer, template_rows):
    """The objective's loss is the mean NLL of exactly the correction tokens and the EOS (NumPy
    float64 reference over the authors' labels), and its mask is `losses.aligner_mask`."""
    tok = smollm2_tokenizer
    td = _tokenized(tok, template_rows, "aligner")
    length = max(len(ex["input_ids"]) for ex in td.examples)
    batch = data.COLLATORS["correction"](td.examples, length, td.pad_id)
    for row, ex in zip(template_rows, td.examples):
        trained = np.asarray(ex["input_ids"])[ex["loss_mask"].astype(bool)]
        assert tok.decode(trained) == row["correction"] + tok.eos_token
        assert list(trained) == tok(row["correction"], add_special_tokens=False)["input_ids"] + [
            tok.eos_token_id]
    mask = losses.aligner_mask(jnp.asarray(batch["attention_mask"]),
                               jnp.asarray(batch["correction_start"]))
    np.testing.assert_array_equal(np.asarray(mask), batch["loss_mask"])

    cfg = models.tiny_config("llama", num_layers=1, vocab_size=len(tok),
                             max_position_embeddings=512, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    model = models.build(cfg, seed=1)
    objective = objectives.make("aligner", {})
    jbatch = {k: jnp.asarray(v) for k, v in batch.items() if k != "example_id"}
    loss, _ = objective.loss(model, jbatch, None, None, None)

    h = np.asarray(model.hidden(jbatch["input_ids"], jbatch["attention_mask"]), np.float64)
    logits = h @ np.asarray(model.output_embedding(), np.float64)  # [D, V]
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = []
    for b, row in enumerate(template_rows):
        _, ids, labels = _authors_example(tok, row)
        for t in range(1, len(ids)):  # labels[t] is predicted from position t - 1
            if labels[t] != IGNORE_INDEX:
                nll.append(-logp[b, t - 1, labels[t]])
    assert len(nll) == int(batch["loss_mask"].sum())
    np.testing.assert_allclose(float(loss), np.mean(nll), rtol=2e-5)
