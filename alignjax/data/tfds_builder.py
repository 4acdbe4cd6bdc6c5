"""A TFDS builder for local preference and correction files (optional: `tensorflow-datasets`).

TFDS has no catalog builder for any preference/RLHF set, so `alignjax_local` prepares the local
copies from `manual_dir` (laid out like `shared/data/`) without touching the network:

  alignjax_local/hh_rlhf      chosen, rejected (the HH-RLHF transcripts, verbatim); one split
                              per `hh-rlhf/<subset>/<split>.jsonl.gz`, named `<subset>_<split>`
                              with "-" -> "_" (e.g. `helpful_base_test`)
  alignjax_local/corrections  question, answer, correction; one split per `aligner/*.json`
                              (PKU Aligner or AlpacaEval form), named after the file

Preparing needs TensorFlow (`pip install tensorflow-cpu`); reading the prepared ArrayRecord
files does not (`read_tfds_rows`, then the usual formats: "hh_rlhf" or "aligner"), so identical
pairs are dropped and counted on reading, as for the local files. Importing this module
registers the builder, so reading lives here too: `load_examples` imports it only for "tfds:"
sources (tensorflow-datasets stays optional).

    builder = prepare("hh_rlhf", manual_dir=shared_data_dir(), data_dir="/tmp/tfds")
    examples, counts = load_examples("tfds:alignjax_local/hh_rlhf", "hh_rlhf",
                                     split="helpful_base_test", data_dir="/tmp/tfds")
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
from collections.abc import Iterator
from typing import Any, ClassVar

import tensorflow_datasets as tfds

from alignjax.data.formats import parse_rows
from alignjax.data.readers import Row, read_rows

_FIELDS = {"hh_rlhf": ("chosen", "rejected"), "corrections": ("question", "answer", "correction")}


def _split_name(text: str) -> str:
    return re.sub(r"\W", "_", text.lower())


class AlignjaxLocal(tfds.core.GeneratorBasedBuilder):
    """Local HH-RLHF preference pairs and Aligner correction triplets."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "HH-RLHF transcripts and Aligner corrections from local files."
    }
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
        tfds.core.BuilderConfig(name="hh_rlhf", description="HH-RLHF chosen/rejected transcripts"),
        tfds.core.BuilderConfig(name="corrections", description="Aligner (q, a, correction)"),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Point manual_dir at a directory laid out like shared/data: "
        "hh-rlhf/<subset>/<split>.jsonl.gz and aligner/*.json."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        fields = _FIELDS[self.builder_config.name]
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({f: tfds.features.Text() for f in fields}),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        root = os.fspath(dl_manager.manual_dir)
        if self.builder_config.name == "hh_rlhf":
            paths = sorted(glob.glob(os.path.join(root, "hh-rlhf", "*", "*.jsonl.gz")))
            names = [
                _split_name(
                    f"{os.path.basename(os.path.dirname(p))}_"
                    f"{os.path.basename(p).removesuffix('.jsonl.gz')}"
                )
                for p in paths
            ]
        else:
            paths = sorted(glob.glob(os.path.join(root, "aligner", "*.json")))
            names = [_split_name(os.path.basename(p)[: -len(".json")]) for p in paths]
        if not paths:
            raise FileNotFoundError(
                f"{root}: no {self.builder_config.name} files found; "
                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        return {name: self._generate_examples(path) for name, path in zip(names, paths)}

    def _generate_examples(self, path: str) -> Iterator[tuple[str, dict[str, str]]]:
        if self.builder_config.name == "hh_rlhf":
            for i, (_, row) in enumerate(read_rows(path)):
                yield str(i), {"chosen": row["chosen"], "rejected": row["rejected"]}
            return
        rows = list(read_rows(path))
        form = "aligner" if rows and "question" in rows[0][1] else "alpaca_eval_aligner"
        examples, _ = parse_rows(rows, form)
        for i, ex in enumerate(examples):
            yield (
                str(i),
                {"question": ex.question, "answer": ex.answer, "correction": ex.correction},
            )


def prepare(config: str, *, manual_dir: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """Prepares `alignjax_local/<config>` as ArrayRecord files (needs TensorFlow).

    Args:
      config: "hh_rlhf" or "corrections".
      manual_dir: the directory holding the source files (e.g. `shared_data_dir()`).
      data_dir: where TFDS writes the prepared dataset.

    Returns:
      The prepared builder (`builder.info.splits` lists the splits and their sizes).
    """
    if importlib.util.find_spec("importlib_resources") is None:
        # tensorflow-datasets 4.9.10 imports it when preparing, but does not require it.
        raise ImportError("preparing a TFDS dataset needs `pip install importlib_resources`")
    builder = tfds.builder(
        f"alignjax_local/{config}", data_dir=data_dir, file_format="array_record"
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return builder


def read_tfds_rows(name: str, *, split: str, data_dir: str) -> Iterator[Row]:
    """Rows of a prepared TFDS dataset in ArrayRecord format (no TensorFlow needed to read).

    Text features come back as bytes and are decoded to str.

    Args:
      name: the registered builder name with config, e.g. "alignjax_local/hh_rlhf".
      split: the split name.
      data_dir: where the dataset was prepared.

    Yields:
      (location, row) pairs, location `tfds:name[split] row i`.
    """
    source = tfds.builder(name, data_dir=data_dir).as_data_source(split=split)
    for i in range(len(source)):
        row = {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in source[i].items()}
        yield f"tfds:{name}[{split}] row {i}", row
