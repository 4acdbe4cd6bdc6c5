"""The TFDS builder prepares the local HH-RLHF and Aligner files and reads them back.

Runs only where TensorFlow is importable (the `tfds` extra). Here: about 2 s to prepare the
four HH-RLHF test splits (8,552 rows) and 1 s for the corrections, plus ~5 s to import TF.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("tensorflow", reason="the TFDS builder test needs the tfds extra (TensorFlow)")
pytest.importorskip("tensorflow_datasets")

from alignjax import data
from alignjax.data import records as R
from alignjax.data import tfds_builder

HH_SPLITS = {
    "harmless_base_test": (2312, 0),
    "helpful_base_test": (2354, 2),
    "helpful_online_test": (1137, 2),
    "helpful_rejection_sampled_test": (2749, 32),
}


def test_prepare_and_read_hh_rlhf(shared_data, tmp_path):
    start = time.perf_counter()
    builder = tfds_builder.prepare("hh_rlhf", manual_dir=shared_data, data_dir=str(tmp_path))
    print(f"\nprepared alignjax_local/hh_rlhf in {time.perf_counter() - start:.1f} s")
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
        k: rows for k, (rows, _) in HH_SPLITS.items()
    }
    for split, (rows, identical) in HH_SPLITS.items():
        examples, counts = data.load_examples(
            "tfds:alignjax_local/hh_rlhf", "hh_rlhf", split=split, data_dir=str(tmp_path)
        )
        local, _ = data.load_examples(
            f"{shared_data}/hh-rlhf/{split.removesuffix('_test').replace('_', '-')}/test.jsonl.gz",
            "hh_rlhf",
        )
        assert counts[R.ROWS] == rows and counts[R.IDENTICAL_PAIRS] == identical
        # TFDS shuffles on preparation: the same pairs, in another order.
        key = lambda e: (repr(e.prompt), e.chosen, e.rejected)
        assert sorted(map(key, examples)) == sorted(map(key, local))


def test_prepare_and_read_corrections(shared_data, tmp_path):
    builder = tfds_builder.prepare("corrections", manual_dir=shared_data, data_dir=str(tmp_path))
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    assert splits["aligner_template_dataset"] == 2
    assert splits["alpaca_eval_aligner_2b_corrects_gpt_4_turbo_2024_04_09"] == 805
    examples, _ = data.load_examples(
        "tfds:alignjax_local/corrections",
        "aligner",
        split="aligner_template_dataset",
        data_dir=str(tmp_path),
    )
    local, _ = data.load_examples(f"{shared_data}/aligner/aligner_template-dataset.json", "aligner")
    key = lambda e: (e.question, e.answer, e.correction)
    assert sorted(map(key, examples)) == sorted(map(key, local))
