"""Packing: every example lands once, and nothing attends across example boundaries.

The boundary checks compare against the packing's own membership lists (which example owns
which token), not against the segment ids they test: the model's attention mask built from the
segment ids, and the model's logits on packed rows against each example run alone.
"""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest

from alignjax import data
from alignjax.data import packing
from alignjax.data.collate import collate_packed
from alignjax.data.tokenization import TokenizedData

PACK_LENGTH = 64


def synthetic_sft(num: int, seed: int = 0, vocab: int = 256) -> TokenizedData:
    """Tokenized SFT examples with random ids: a prompt (untrained) then a trained response."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(num):
        n = int(rng.integers(4, 40))
        n_prompt = int(rng.integers(1, n))
        mask = np.r_[np.zeros(n_prompt), np.ones(n - n_prompt)].astype(np.uint8)
        examples.append(
            {
                "input_ids": rng.integers(3, vocab, n).astype(np.int32),
                "loss_mask": mask,
                "example_id": i,
            }
        )
    return TokenizedData("sft", examples, pad_id=0, counts=collections.Counter())


def owners(row: dict, sft: TokenizedData) -> np.ndarray:
    """Example id owning each of the PACK_LENGTH positions (-1 on padding), from the membership."""
    out = np.full(PACK_LENGTH, -1)
    start = 0
    for ex_id in row["example_ids"]:
        n = len(sft.examples[ex_id]["input_ids"])
        out[start : start + n] = ex_id
        start += n
    return out


def test_best_fit_places_every_example_once_within_capacity():
    rng = np.random.default_rng(1)
    lengths = [int(n) for n in rng.integers(1, 100, 500)]
    bins = packing.best_fit_bins(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    lower_bound = -(-sum(lengths) // 128)
    assert len(bins) <= lower_bound * 1.1  # best-fit decreasing packs nearly full rows
    with pytest.raises(ValueError, match="example 0 has 200 tokens"):
        packing.best_fit_bins([200], 128)


def test_packed_rows_hold_the_examples_with_restarting_positions():
    sft = synthetic_sft(60)
    packed = data.pack(sft, PACK_LENGTH)
    assert packed.kind == "packed" and packed.counts["packed_rows"] == len(packed)
    seen = []
    for row in packed.examples:
        seg, pos = row["segment_ids"], row["positions"]
        assert len(row["input_ids"]) <= PACK_LENGTH
        for s, ex_id in enumerate(row["example_ids"], start=1):
            ex = sft.examples[ex_id]
            np.testing.assert_array_equal(row["input_ids"][seg == s], ex["input_ids"])
            np.testing.assert_array_equal(row["loss_mask"][seg == s], ex["loss_mask"])
            np.testing.assert_array_equal(pos[seg == s], np.arange(len(ex["input_ids"])))
            seen.append(ex_id)
    assert sorted(seen) == list(range(60))


def test_packed_batch_attention_mask_is_block_diagonal_causal():
    transformer = pytest.importorskip("alignjax.models.transformer")
    sft = synthetic_sft(40)
    packed = data.pack(sft, PACK_LENGTH)
    batch = collate_packed(packed.examples, PACK_LENGTH, packed.pad_id)
    assert (batch["attention_mask"] == (batch["segment_ids"] > 0)).all()
    mask = np.asarray(transformer.attention_mask_BLL(batch["segment_ids"], None))[:, 0]
    causal = np.tril(np.ones((PACK_LENGTH, PACK_LENGTH), bool))
    for b, row in enumerate(packed.examples):
        owner = owners(row, sft)
        expected = (owner[:, None] == owner[None, :]) & (owner[None, :] >= 0) & causal
        np.testing.assert_array_equal(mask[b], expected)
        assert not mask[b][owner[:, None] != owner[None, :]].any()  # no cross-example pair


def test_packed_logits_equal_unpacked_logits():
    models = pytest.importorskip("alignjax.models")
    nnx = pytest.importorskip("flax.nnx")
    cfg = models.tiny_config(family="llama")
    model = models.Transformer(cfg, rngs=nnx.Rngs(0))
    sft = synthetic_sft(12, vocab=cfg.vocab_size)
    packed = data.pack(sft, PACK_LENGTH)
    assert any(len(r["example_ids"]) > 2 for r in packed.examples)
    batch = collate_packed(packed.examples, PACK_LENGTH, packed.pad_id)
    forward = nnx.jit(
        lambda m, ids, mask, pos, seg: m(ids, mask, positions_BL=pos, segment_ids_BL=seg)
    )
    logits = np.asarray(
        forward(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            batch["positions"],
            batch["segment_ids"],
        )
    )
    leaky = np.asarray(forward(model, batch["input_ids"], batch["attention_mask"], None, None))
    # Reference: every example alone, right-padded into one batch; with causal attention the
    # padding after an example cannot change its logits, so no mask is involved at all.
    alone_ids = np.zeros((len(sft), PACK_LENGTH), np.int32)
    for ex in sft.examples:
        alone_ids[ex["example_id"], : len(ex["input_ids"])] = ex["input_ids"]
    alone = np.asarray(forward(model, alone_ids, None, None, None))
    leaked = False
    for b, row in enumerate(packed.examples):
        owner = owners(row, sft)
        for ex_id in row["example_ids"]:
            n = len(sft.examples[ex_id]["input_ids"])
            np.testing.assert_allclose(
                logits[b, owner == ex_id], alone[ex_id, :n], rtol=1e-5, atol=1e-5
            )
            leaked |= not np.allclose(
                leaky[b, owner == ex_id], alone[ex_id, :n], rtol=1e-5, atol=1e-5
            )
    assert leaked  # control: without segment ids the later examples do see the earlier ones


def test_pack_real_sft_examples(shared_data, smollm2_tokenizer):
    path = os.path.join(shared_data, "alpaca_eval/alpaca_eval_reference_text_davinci_003.json")
    examples, _ = data.load_examples(path, "alpaca_eval")
    sft = data.tokenize(examples, smollm2_tokenizer, max_length=512, truncation="drop")
    packed = data.pack(sft, 512)
    tokens = sum(len(r["input_ids"]) for r in sft.examples)
    print(
        f"\npacked {len(sft)} AlpacaEval examples ({tokens} tokens) into {len(packed)} rows "
        f"of 512: {tokens / (512 * len(packed)):.1%} full"
    )
    assert len(packed) <= 1.05 * tokens / 512 + 1
    it = data.batch_iterator(
        packed, batch_size=4, seed=0, shard_index=0, shard_count=1, bucket_lengths=(512,)
    )
    batch = next(it)
    assert {k: v.shape for k, v in batch.items()} == {
        k: (4, 512)
        for k in ("input_ids", "attention_mask", "loss_mask", "segment_ids", "positions")
    }
    with pytest.raises(ValueError, match="packing needs"):
        data.pack(TokenizedData("pair", [], 0), 512)
