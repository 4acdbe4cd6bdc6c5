"""The grain pipeline: determinism, epochs, resuming from a saved state, hosts, buckets."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from alignjax import data
from alignjax.data.tokenization import TokenizedData

BUCKETS = (16, 32, 64)


def synthetic(kind: str = "sft", num: int = 50, seed: int = 0) -> TokenizedData:
    """Tokenized examples of varied lengths (3..60 tokens); ids encode the example id."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(num):
        n = int(rng.integers(3, 61))
        ids = np.full(n, 1000 + i, np.int32)
        mask = np.r_[np.zeros(n // 2), np.ones(n - n // 2)].astype(np.uint8)
        if kind == "pair":
            examples.append(
                {
                    "chosen_input_ids": ids,
                    "chosen_loss_mask": mask,
                    "rejected_input_ids": ids[: max(2, n // 3)],
                    "rejected_loss_mask": mask[: max(2, n // 3)],
                    "example_id": i,
                }
            )
        elif kind == "prompt":
            examples.append({"input_ids": ids, "example_id": i})
        else:
            examples.append({"input_ids": ids, "loss_mask": mask, "example_id": i})
    return TokenizedData(kind, examples, pad_id=0, counts=collections.Counter())


def run(it, steps: int | None = None) -> list[dict[str, np.ndarray]]:
    out = []
    for batch in it:
        out.append(batch)
        if steps is not None and len(out) == steps:
            break
    return out


def ids(batches) -> list[list[int]]:
    return [b["example_id"].tolist() for b in batches]


def one_host(**kwargs) -> dict:
    return {"shard_index": 0, "shard_count": 1, "bucket_lengths": BUCKETS, **kwargs}


def test_resume_from_saved_state_gives_the_uninterrupted_order():
    sft = synthetic()
    kwargs = one_host(batch_size=4, seed=3, num_epochs=3, prefetch=8, num_threads=2)
    full = run(data.batch_iterator(sft, **kwargs))
    assert len(full) == 3 * 50 // 4
    it = data.batch_iterator(sft, **kwargs)
    head = run(it, steps=7)  # the prefetcher has read ahead; the state must not have
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    resumed = data.batch_iterator(sft, **kwargs)
    resumed.set_state(state)
    tail = run(resumed)
    assert len(head) + len(tail) == len(full)
    for got, want in zip(head + tail, full):
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_each_epoch_is_a_new_permutation_and_the_seed_fixes_it():
    sft = synthetic()

    def order(seed: int) -> list[int]:
        batches = run(data.batch_iterator(sft, **one_host(batch_size=5, seed=seed, num_epochs=2)))
        return [i for batch in ids(batches) for i in batch]

    first = order(0)
    epoch1, epoch2 = first[:50], first[50:]
    assert sorted(epoch1) == sorted(epoch2) == list(range(50))
    assert epoch1 != epoch2 and epoch1 != list(range(50))
    assert order(0) == first and order(1) != first


def test_two_hosts_see_disjoint_complete_shards_with_equal_shapes():
    sft = synthetic(num=48)
    kwargs = {"batch_size": 8, "seed": 5, "num_epochs": 1, "bucket_lengths": BUCKETS}
    single = run(data.batch_iterator(sft, shard_index=0, shard_count=1, **kwargs))
    hosts = [
        run(data.batch_iterator(sft, shard_index=i, shard_count=2, **kwargs)) for i in range(2)
    ]
    assert len(hosts[0]) == len(hosts[1]) == len(single) == 6
    for step, (a, b, whole) in enumerate(zip(*hosts, single)):
        assert a["input_ids"].shape == b["input_ids"].shape == (4, whole["input_ids"].shape[1])
        assert not set(a["example_id"]) & set(b["example_id"]), step
        assert set(a["example_id"]) | set(b["example_id"]) == set(whole["example_id"])
    seen = [i for h in hosts for b in h for i in b["example_id"]]
    assert sorted(seen) == list(range(48))


def test_host_row_blocks_concatenate_to_the_single_host_batch():
    """`rows` = a host's block [start, stop) (sharding.host_rows): the blocks of the hosts, in
    order, are the single-host batch row for row, at the global batch's bucket, also for the
    last, partial batch (padding rows, example_id -1)."""
    sft = synthetic(num=45)
    kwargs = {"batch_size": 8, "seed": 5, "num_epochs": 1, "bucket_lengths": BUCKETS,
              "drop_remainder": False}
    single = run(data.batch_iterator(sft, shard_index=0, shard_count=1, **kwargs))
    blocks = [(0, 2), (2, 6), (6, 8)]
    hosts = [run(data.batch_iterator(sft, rows=r, **kwargs)) for r in blocks]
    assert len(single) == 6 and all(len(h) == 6 for h in hosts)
    for step, whole in enumerate(single):
        for key, value in whole.items():
            np.testing.assert_array_equal(
                np.concatenate([h[step][key] for h in hosts]), value, err_msg=f"{step} {key}")
    with pytest.raises(ValueError, match=r"rows=\(6, 9\) is not a block of a batch of 8"):
        data.batch_iterator(sft, rows=(6, 9), **kwargs)


def test_batches_are_padded_to_the_smallest_fitting_bucket():
    sft = synthetic()
    for batch in run(data.batch_iterator(sft, **one_host(batch_size=4, num_epochs=2))):
        lengths = [len(sft.examples[i]["input_ids"]) for i in batch["example_id"]]
        want = min(b for b in BUCKETS if b >= max(lengths))
        assert batch["input_ids"].shape == (4, want)
        for row, n in enumerate(lengths):
            assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (want - n)
            np.testing.assert_array_equal(
                batch["loss_mask"][row, :n], sft.examples[batch["example_id"][row]]["loss_mask"]
            )


def test_last_partial_batch_is_filled_with_padding_rows():
    batches = run(
        data.batch_iterator(synthetic(num=10), **one_host(batch_size=4, drop_remainder=False))
    )
    assert [b["input_ids"].shape[0] for b in batches] == [4, 4, 4]
    last = batches[-1]
    assert last["example_id"].tolist()[2:] == [-1, -1]
    assert not last["attention_mask"][2:].any() and not last["loss_mask"][2:].any()
    assert data.steps_per_epoch(10, 4, drop_remainder=False) == 3
    assert data.steps_per_epoch(10, 4) == 2


def test_pair_batches_share_one_length():
    pairs = synthetic("pair")
    batch = next(data.batch_iterator(pairs, **one_host(batch_size=4)))
    assert set(batch) == {
        f"{side}_{field}"
        for side in ("chosen", "rejected")
        for field in ("input_ids", "attention_mask", "loss_mask")
    } | {"example_id"}
    assert batch["chosen_input_ids"].shape == batch["rejected_input_ids"].shape
    assert (batch["rejected_attention_mask"].sum(1) < batch["chosen_attention_mask"].sum(1)).all()


def test_prompt_batches_are_left_padded():
    batch = next(data.batch_iterator(synthetic("prompt"), **one_host(batch_size=4)))
    for row in range(4):
        n = len(synthetic("prompt").examples[batch["example_id"][row]]["input_ids"])
        length = batch["input_ids"].shape[1]
        assert batch["attention_mask"][row].tolist() == [0] * (length - n) + [1] * n


def test_configuration_errors_are_explicit():
    sft = synthetic()
    with pytest.raises(ValueError, match="not divisible by shard_count=3"):
        data.batch_iterator(sft, batch_size=4, shard_index=0, shard_count=3)
    with pytest.raises(ValueError, match="exceeds the largest bucket length 32"):
        data.batch_iterator(
            sft, batch_size=4, shard_index=0, shard_count=1, bucket_lengths=(16, 32)
        )
    with pytest.raises(ValueError, match=r"shard_index=2 is not in \[0, shard_count=2\)"):
        data.batch_iterator(sft, batch_size=4, shard_index=2, shard_count=2)


def test_default_shard_is_this_jax_process():
    sft = synthetic(num=8)
    default = ids(run(data.batch_iterator(sft, batch_size=4, bucket_lengths=BUCKETS)))
    explicit = ids(run(data.batch_iterator(sft, **one_host(batch_size=4))))
    assert default == explicit


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_a_json_state():
    sft = synthetic()
    kwargs = one_host(batch_size=4, seed=2, num_epochs=1)
    want = ids(run(data.batch_iterator(sft, **kwargs)))
    it = data.batch_iterator(sft, worker_count=2, **kwargs)
    head = ids(run(it, steps=3))
    state = json.loads(json.dumps(it.get_state()))
    resumed = data.batch_iterator(sft, worker_count=2, **kwargs)
    resumed.set_state(state)
    assert head + ids(run(resumed)) == want
