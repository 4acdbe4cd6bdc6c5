"""The self judge (alignjax.rl.self_judge): its rating against a direct forward pass, and the
agreement statistic on orderings worked out by hand."""

import numpy as np
import pytest
from flax import nnx

from alignjax import data as data_lib
from alignjax import models, sharding
from alignjax.rl import self_judge


@pytest.fixture(scope="module")
def tiny(smollm2_tokenizer):
    cfg = models.tiny_config("llama", vocab_size=len(smollm2_tokenizer),
                             max_position_embeddings=512,
                             pad_token_id=smollm2_tokenizer.pad_token_id)
    return models.build(cfg, seed=3), smollm2_tokenizer


def test_rating_is_the_expected_digit_of_a_full_forward(tiny):
    """Batched, left-padded ratings equal sum_r r * softmax(logits at the prompt's end)[r]
    over the five digits, computed from the unpadded prompt's full logits in float64."""
    model, tokenizer = tiny
    graphdef, params = nnx.split(model)
    judge = self_judge.SelfJudge(graphdef, tokenizer, "the review is positive",
                                 sharding.make_mesh(), batch=4, buckets=(192, 256))
    requests = ["Continue this movie review: \"A quiet film\"", "Say something nice.",
                "Continue this movie review: \"It was long\"", "Hi", "A fifth request"]
    responses = ["It was lovely and warm.", "You are great!", "Too long, and dull.", "Hello",
                 "x"]
    got = judge(params, requests, responses)
    digits = self_judge.rating_token_ids(tokenizer)
    assert len(set(digits)) == 5
    for q, a, g in zip(requests, responses, got, strict=True):
        ids = np.asarray([judge.prompt_ids(q, a)], np.int32)
        logits = np.asarray(model(ids, np.ones_like(ids)), np.float64)[0, -1, digits]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        np.testing.assert_allclose(g, p @ np.arange(1, 6), rtol=0, atol=1e-5)
    assert np.all((got >= 1) & (got <= 5)) and np.ptp(got) > 0


def test_judge_prompt_names_the_criterion_and_both_texts(tiny):
    _, tokenizer = tiny
    text = self_judge.JUDGE_TEMPLATE.format(criterion="C1", request="Q2", response="A3")
    assert text.index("C1") < text.index("Q2") < text.index("A3")
    rendered = data_lib.ChatRenderer(tokenizer).prompt([{"role": "user", "content": text}])
    assert "C1" in rendered and rendered.rstrip().endswith("assistant")


def test_bad_inputs_name_the_setting(tiny):
    model, tokenizer = tiny
    graphdef, params = nnx.split(model)
    with pytest.raises(ValueError, match=r"config\.self_judge\.criterion"):
        self_judge.SelfJudge(graphdef, tokenizer, " ", sharding.make_mesh())
    judge = self_judge.SelfJudge(graphdef, tokenizer, "c", sharding.make_mesh(), buckets=(64,))
    with pytest.raises(ValueError, match=r"row 0's .* \(config\.self_judge\.buckets\)"):
        judge(params, ["q " * 200], ["a"])


def test_agreement_counts_orderings_within_each_prompt():
    true = np.array([0.1, 0.5, 0.9, 0.3, 0.3, -0.2])  # two prompts of 3 samples
    same = self_judge.agreement(true * 4 + 1, true, 3)
    assert same["pairs"] == 5 and same["agreement"] == 1.0  # the tie (0.3, 0.3) is not counted
    flipped = self_judge.agreement(-true, true, 3)
    assert flipped["agreement"] == 0.0
    # prompt 1: right on (0, 1) and (0, 2), wrong on (1, 2); prompt 2: (3, 4) is a true tie
    # (not counted), (3, 5) right, (4, 5) a judged tie (half)
    judged = np.array([1.0, 2.0, 1.5, 3.0, 1.0, 1.0])
    got = self_judge.agreement(judged, true, 3)
    assert got["agree"] == 2 + 1 + 0.5 and got["pairs"] == 5
    assert got["agreement_ci95_low"] < got["agreement"] < got["agreement_ci95_high"]
    with pytest.raises(ValueError, match="groups of 4"):
        self_judge.agreement(judged, true, 4)
