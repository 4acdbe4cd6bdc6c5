"""Sharded training on 8 simulated CPU devices (own process) against one device."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_train import _load, read_metrics, small

from alignjax import train

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def sharded(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "sharded_check.py"),
                           tiny_model_dir, str(out)], env=env, check=False, capture_output=True,
                          text=True, cwd=os.path.dirname(HERE))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


# (parameter path suffix, expected PartitionSpec under DEFAULT_RULES)
EXPECTED = {
    "embed_tokens']['embedding']": ["tensor", "fsdp"],
    "self_attn']['q_proj']['kernel']": ["fsdp", "tensor"],
    "self_attn']['k_proj']['kernel']": ["fsdp", "tensor"],
    "self_attn']['o_proj']['kernel']": ["tensor", "fsdp"],
    "mlp']['gate_proj']['kernel']": ["fsdp", "tensor"],
    "mlp']['down_proj']['kernel']": ["tensor", "fsdp"],
    "lm_head']['kernel']": ["fsdp", "tensor"],
    "input_layernorm']['weight']": [None],
}


def test_parameters_are_sharded_as_the_rules_say(sharded):
    specs = json.loads((sharded / "specs.json").read_text())
    assert specs["devices"] == 8
    assert specs["batch_spec"][0] == ["data", "fsdp"]
    for when in ("before", "after"):  # the train step keeps the shardings it was given
        for tree in ("params", "mu"):
            entries = specs[when][tree]
            for suffix, spec in EXPECTED.items():
                hits = [v for k, v in entries.items() if k.removesuffix(".value").endswith(suffix)]
                assert hits, (suffix, list(entries)[:5])
                for v in hits:
                    assert v["spec"] == spec, (when, tree, suffix, v)
                    # each device holds 1/2 of every sharded dimension (fsdp=2, tensor=2)
                    expect = [n // 2 if s else n for n, s in zip(v["shape"], spec + [None])]
                    assert v["shard"] == expect, (suffix, v)


def test_same_loss_trajectory_as_one_device(sharded, tiny_model_dir, tmp_path):
    config = small(_load(os.path.join(os.path.dirname(HERE), "configs", "quickstart.py")),
                   tiny_model_dir, steps=4)
    config.export = False
    train.run(config, str(tmp_path))
    one = read_metrics(str(tmp_path))
    eight = read_metrics(str(sharded / "run"))
    assert [r["step"] for r in one] == [r["step"] for r in eight]
    for a, b in zip(one, eight):
        for key in ("train/loss", "train/grad_norm", "eval/sft/nll"):
            if key in a:
                np.testing.assert_allclose(b[key], a[key], rtol=2e-5, err_msg=f"{key} {a['step']}")
