"""Property-based tests: random rows, random bytes and random config overrides.

Readers and formats either fail with an error naming the file and line, or account for every
row (rows read = examples kept + rows counted as dropped); config overrides either parse and
pass `train.check_config`, or fail naming the key.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import tempfile

import pytest

hypothesis = pytest.importorskip("hypothesis")  # pinned in requirements-test.txt
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from alignjax.data import records  # noqa: E402
from alignjax.data.load import load_examples  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

DROPPED = (records.MALFORMED_SKIPPED, records.IDENTICAL_PAIRS, records.NO_PREFERENCE,
           records.EMPTY_DROPPED)
FIELDS = ("prompt", "chosen", "rejected", "response", "messages", "completion", "label",
          "response_0", "response_1", "better_response_id", "output_1", "output_2",
          "preference", "question", "answer", "correction", "instruction", "output")
FORMATS = ("preference", "sft", "hh_rlhf", "pku_saferlhf", "alpaca_eval_annotations",
           "unpaired", "aligner", "prompt", "alpaca_eval")

texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "x"]),
                                           "content": texts}), max_size=3)
values = st.one_of(texts, st.sampled_from(["", " ", "\n\nHuman: hi\n\nAssistant: yo"]),
                   st.integers(-2, 3), st.booleans(), st.none(), st.floats(allow_nan=True),
                   messages, st.lists(st.integers(), max_size=2))
rows = st.one_of(st.dictionaries(st.sampled_from(FIELDS), values, max_size=6),
                 values)  # mostly objects, sometimes a bare value (malformed)
lines = st.one_of(rows.map(lambda r: json.dumps(r).encode()),
                  st.binary(max_size=24).map(lambda b: b.replace(b"\n", b"")))


def _accounted(counts) -> None:
    assert counts[records.ROWS] == counts[records.EXAMPLES] + sum(counts[k] for k in DROPPED)


def _named(error: Exception, path: str) -> None:
    """The error names the file and, unless the whole file is at fault, a line."""
    assert isinstance(error, ValueError), repr(error)
    assert re.match(re.escape(path) + r"(:\d+)?: ", str(error)), str(error)


@FAST
@given(body=st.lists(lines, max_size=8), fmt=st.sampled_from(FORMATS),
       gz=st.booleans(), empty=st.sampled_from(["keep", "drop"]))
def test_random_rows_are_kept_or_counted(body, fmt, gz, empty):
    data = b"\n".join(body) + b"\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rows.jsonl" + (".gz" if gz else ""))
        with open(path, "wb") as f:
            f.write(gzip.compress(data) if gz else data)
        array = data.lstrip().startswith(b"[")  # read as one JSON document
        try:
            examples, counts = load_examples(path, fmt, on_malformed="skip", on_empty=empty)
        except ValueError as e:  # only a damaged file as a whole is not skipped line by line
            assert array, str(e)
            _named(e, path)
            return
        if not array:
            assert counts[records.ROWS] == sum(1 for line in body if line.strip())
        assert len(examples) == counts[records.EXAMPLES]
        _accounted(counts)
        try:
            strict, strict_counts = load_examples(path, fmt)
        except ValueError as e:
            _named(e, path)
            assert counts[records.MALFORMED_SKIPPED] > 0 or "JSON" in str(e)
        else:
            assert strict == examples and strict_counts[records.MALFORMED_SKIPPED] == 0


@FAST
@given(raw=st.binary(max_size=200), suffix=st.sampled_from([".jsonl", ".json", ".jsonl.gz"]),
       compress=st.booleans(), fmt=st.sampled_from(FORMATS))
def test_random_bytes_give_a_named_error_or_counted_rows(raw, suffix, compress, fmt):
    if suffix.endswith(".gz") and compress:
        raw = gzip.compress(raw)[: max(1, len(raw))]  # often cut short
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "random" + suffix)
        with open(path, "wb") as f:
            f.write(raw)
        for on_malformed in ("raise", "skip"):
            try:
                examples, counts = load_examples(path, fmt, on_malformed=on_malformed)
            except ValueError as e:
                _named(e, path)
            else:
                assert len(examples) == counts[records.EXAMPLES]
                _accounted(counts)


# --- config overrides, as the entry point parses them -------------------------------------


def _parse(config_file: str, overrides: list[str]):
    from absl import flags
    from ml_collections import config_flags

    argv = ["main", f"--config={config_file}", *overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    fv(argv)
    return fv.config


def _leaves(config, prefix=""):
    out = []
    for k, v in config.items():
        if hasattr(v, "items"):
            out += _leaves(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


QUICKSTART = os.path.join(REPO, "configs", "quickstart.py")


@pytest.fixture(scope="module")
def leaf_keys():
    return _leaves(_parse(QUICKSTART, []))


override_values = st.one_of(
    st.integers(-3, 9).map(str), st.sampled_from(["0.5", "1e-3", "nan", "inf", "True", "False",
                                                  "", "(1, 2)", "(0,)", "('a',)", "None",
                                                  "stop", "skip", "keep", "drop", "random"]),
    st.text(alphabet="abc_.-/ 0123456789", max_size=8))


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_config_overrides_parse_and_check_or_name_the_key(leaf_keys, data):
    import jax

    from alignjax import train

    key = data.draw(st.sampled_from([*leaf_keys, "stpes", "optim.learnig_rate", "data.formt"]))
    value = data.draw(override_values)
    try:
        config = _parse(QUICKSTART, [f"--config.{key}={value}"])
    except Exception as e:  # absl and ml_collections raise their own types, naming the flag
        assert key.split(".")[-1] in str(e), (key, value, str(e))
        return
    assert _leaves(config) == leaf_keys  # a locked config gains no key
    try:
        train.check_config(config, jax.devices()[:1])
    except (ValueError, TypeError) as e:
        top = "config.mesh" if key.startswith("mesh.") else f"config.{key}"
        named = top in str(e) or (key in ("batch_size", "micro_batches")
                                  and "config.batch_size" in str(e))
        assert named, (key, value, str(e))

