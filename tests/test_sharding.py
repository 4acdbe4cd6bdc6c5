"""Sharded training on 8 simulated CPU devices (own process) against one device."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from test_train import _load, read_metrics, small

from alignjax import models, sharding, train

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


@pytest.fixture(scope="module")
def specs(sharded):
    return json.loads((sharded / "specs.json").read_text())


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


def test_parameters_are_sharded_as_the_rules_say(specs):
    assert specs["devices"] == 8
    assert specs["batch_spec"][0] == ["data", "fsdp"]
    for when in ("before", "after"):  # the train step keeps the shardings it was given
        params = {k: v for k, v in specs[when].items() if k.startswith(".params")}
        for suffix, spec in EXPECTED.items():
            hits = [v for k, v in params.items() if k.endswith(suffix)]
            assert hits, (suffix, list(params)[:5])
            for v in hits:
                assert v["spec"] == spec, (when, suffix, v)


def _spec(logical, ndim):
    """The rules' PartitionSpec of logical names, as sharded_check records it (padded, lists)."""
    spec = [a if a is None or isinstance(a, str) else list(a)
            for a in sharding.logical_to_spec(logical, sharding.DEFAULT_RULES)]
    return spec + [None] * (ndim - len(spec))


def _shard(shape, spec, mesh):
    """The local shard shape: each dimension divided by the sizes of the mesh axes it is over."""
    def size(axes):
        axes = [] if axes is None else [axes] if isinstance(axes, str) else axes
        return math.prod(mesh[a] for a in axes)

    return [n // size(axes) for n, axes in zip(shape, spec)]


def test_every_parameter_and_optimiser_leaf_is_sharded_as_the_rules_say(specs):
    """Every parameter has its rules' spec and shard shape; Adam's mu and nu of every parameter
    follow it exactly; everything else in the state (step, counts, RNG) is a replicated scalar."""
    logical, mesh = specs["logical"], specs["mesh"]
    assert mesh == {"data": 2, "fsdp": 2, "tensor": 2}
    for when in ("before", "after"):
        leaves = specs[when]
        params = {k.removeprefix(".params"): v for k, v in leaves.items()
                  if k.startswith(".params")}
        assert set(params) == set(logical)  # every parameter, each with its logical names
        for path, v in params.items():
            assert v["spec"] == _spec(logical[path], len(v["shape"])), (when, path, v)
            assert v["shard"] == _shard(v["shape"], v["spec"], mesh), (when, path, v)
        moments = {".mu": {}, ".nu": {}}
        others = {}
        for k, v in leaves.items():
            if k.startswith(".opt_state"):
                name = next((m for m in moments if m + "[" in k), None)
                if name is None:
                    others[k] = v
                else:
                    moments[name][k[k.index(name + "[") + len(name):]] = v
            elif not k.startswith(".params"):
                others[k] = v
        for name, moment in moments.items():
            assert set(moment) == set(params), (when, name)
            for path, v in moment.items():
                assert v == params[path], (when, name, path, v, params[path])
        assert {".step", ".rng"} <= set(others)
        assert sum(".count" in k for k in others) == 2, list(others)  # Adam's and the schedule's
        for k, v in others.items():
            assert v["shape"] == v["shard"] == v["spec"] == [], (when, k, v)
        assert len(params) * 3 + len(others) == len(leaves)


# The HLO sharding of each activation constraint, per mesh (8 devices).
CONSTRAINTS = {
    # data=8 or fsdp=8: the batch split 8 ways, nothing else split
    "data": {"boundary": "devices=[8,1,1]<=[8]", "queries": "devices=[8,1,1,1]<=[8]",
             "keys": "devices=[8,1,1,1]<=[8]", "hidden": "devices=[8,1,1]<=[8]",
             "logits": "devices=[8,1,1]<=[8]"},
    # fsdp=4 x tensor=2: the batch over the 4 fsdp groups; heads, the feed-forward width and the
    # vocabulary over the 2 tensor devices; block boundaries replicated over tensor
    "fsdp_tensor": {"boundary": "devices=[4,1,1,2]<=[8] last_tile_dim_replicate",
                    "queries": "devices=[4,1,2,1]<=[8]", "keys": "devices=[4,1,2,1]<=[8]",
                    "hidden": "devices=[4,1,2]<=[8]", "logits": "devices=[4,1,2]<=[8]"},
}
CONSTRAINTS["fsdp"] = CONSTRAINTS["data"]


@pytest.mark.parametrize("mesh_name", ["data", "fsdp", "fsdp_tensor"])
def test_lowered_step_carries_the_activation_constraints(specs, tiny_model_dir, mesh_name):
    """The jitted train step (and a forward) traces under the mesh and rules: the embeddings'
    output and every block boundary, queries, keys/values, the feed-forward hidden and (in the
    forward: the step reads log-probs from hidden states) the logits carry sharding constraints
    with the devices the rules give them."""
    cfg = models.load_hf_config(tiny_model_dir)
    b, length = 8, 16
    kind_of = {f"{b},{length},{cfg.hidden_size}": "boundary",
               f"{b},{length},{cfg.num_heads},{cfg.head_dim}": "queries",
               f"{b},{length},{cfg.num_kv_heads},{cfg.head_dim}": "keys",
               f"{b},{length},{cfg.intermediate_size}": "hidden",
               f"{b},{length},{cfg.vocab_size}": "logits"}
    expected = CONSTRAINTS[mesh_name]
    seen = {"step": {}, "forward": {}}
    for part, found in specs["constraints"][mesh_name].items():
        for shape, hlo in found:
            kind = kind_of.get(shape)
            assert hlo == expected.get(kind), (part, shape, hlo)
            seen[part][kind] = seen[part].get(kind, 0) + 1
    assert set(seen["step"]) == {"boundary", "queries", "keys", "hidden"}, seen
    assert set(seen["forward"]) == set(expected), seen
    for part in seen:  # the embeddings' output and one per block (more in the backward)
        assert seen[part]["boundary"] >= cfg.num_layers + 1, seen


def test_indivisible_activation_dimensions_are_left_replicated(specs):
    # on fsdp=4 x tensor=2: 4 rows keep the batch split and replicate 3 heads; 2 rows are not
    # split over fsdp (only over data, of size 1) and their 2 heads are split over tensor
    assert specs["constraints"]["indivisible"] == [
        ["4,16,3,16", "devices=[4,1,1,1,2]<=[8] last_tile_dim_replicate"],
        ["2,16,2,16", "devices=[1,1,2,1,4]<=[4,2]T(1,0) last_tile_dim_replicate"]]


def test_sharded_step_with_constraints_matches_one_device(specs):
    one, eight = specs["metrics"]["one"], specs["metrics"]["data_fsdp_tensor"]
    for key in ("train/loss", "train/grad_norm"):
        np.testing.assert_allclose(eight[key], one[key], rtol=2e-5, err_msg=key)


def test_fsdp_state_is_not_replicated(specs):
    """On fsdp=8 (and fsdp=4 x tensor=2) a device holds 1/8 of parameters and Adam moments; only
    the norm weights (and their moments) and the counts are whole on every device."""
    design = sum(v["bytes"] for k, v in specs["before"].items()
                 if k.startswith((".params", ".opt_state")) and not any(v["spec"]))
    data = specs["bytes"]["data"]
    assert data["per_device"] == data["total"]  # data parallelism replicates the state
    for name in ("fsdp", "fsdp_tensor"):
        got = specs["bytes"][name]
        assert got["total"] == data["total"]
        assert got["per_device"] == (got["total"] - design) / 8 + design, (name, got, design)
        assert got["per_device"] < 1.001 * got["total"] / 8, (name, got)


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


@pytest.mark.parametrize("mesh_name", ["data", "fsdp", "fsdp_tensor", "data_tensor"])
def test_memory_plan_matches_the_compiled_step(specs, mesh_name):
    """Pure data parallel, FSDP, FSDP x tensor and data x tensor: the memory plan's per-device
    bytes of the state and the batch (shard shapes of abstract arrays) equal those of the real
    arrays, and their sum is the compiled step's argument size: nothing is replicated that
    the rules split."""
    got = specs["bytes"][mesh_name]
    assert got["plan_state"] == got["state_per_device"], got
    assert got["plan_batch"] == got["batch_per_device"], got
    assert got["compiled_arguments"] == got["state_per_device"] + got["batch_per_device"], got


def test_data_tensor_state_is_split_only_over_tensor(specs):
    """On data=4 x tensor=2 a device holds half of every parameter (and Adam moment) the rules
    split over tensor and all of the others."""
    want = sum(v["bytes"] // 2 if "tensor" in v["spec"] else v["bytes"]
               for k, v in specs["before"].items() if k.startswith((".params", ".opt_state")))
    assert specs["bytes"]["data_tensor"]["per_device"] == want
