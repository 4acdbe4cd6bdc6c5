"""Sharded greedy sampling on 8 simulated CPU devices (own process) against one device."""

import json
import os
import subprocess
import sys

import numpy as np
from flax import nnx

from alignjax import memory, models
from alignjax.sampler import GREEDY, make_sampler

HERE = os.path.dirname(os.path.abspath(__file__))


def test_sharded_greedy_sampling_matches_one_device(tmp_path):
    cfg = models.tiny_config("llama")
    model = models.build(cfg, seed=3)
    models.save_hf(model, str(tmp_path / "model"))
    rng = np.random.default_rng(0)
    prompts = [[int(t) for t in rng.integers(3, cfg.vocab_size, n)]
               for n in (16, 3, 9, 1, 12, 7, 5, 14)]
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "sampler_sharded_check.py"),
                           str(tmp_path / "model"), str(tmp_path / "prompts.json"),
                           str(tmp_path / "out.json")], env=env, check=False,
                          capture_output=True, text=True, cwd=os.path.dirname(HERE))
    assert proc.returncode == 0, proc.stderr[-4000:]
    eight = json.loads((tmp_path / "out.json").read_text())

    graphdef, params = nnx.split(models.load_hf(str(tmp_path / "model"))[0])
    one = make_sampler(graphdef, cfg, max_new_tokens=10, prompt_buckets=(16,),
                       stop_token_ids=())(params, prompts, 0, GREEDY)
    np.testing.assert_array_equal(np.asarray(eight["tokens"]), np.asarray(one.tokens_BT))
    np.testing.assert_array_equal(np.asarray(eight["mask"]), np.asarray(one.mask_BT))
    np.testing.assert_allclose(np.asarray(eight["model_logps"]), np.asarray(one.model_logps_BT),
                               atol=1e-5)
    # rows over data (x fsdp, of size 1 here), the cache's key/value heads over tensor:
    # each device holds [8 / 4, 2 / 2, 26, 16] of the [8, 2, 26, 16] cache of a layer
    data = ("data", ["data", "fsdp"])
    assert eight["tokens_spec"][0] in data
    assert eight["cache_spec"][0] in data and eight["cache_spec"][1:] == ["tensor", None, None]
    assert eight["cache_shard"] == [2, 1, 26, 16] and eight["cache_shape"] == [8, 2, 26, 16]
    # every layer's keys and values alike, and a device holds what the memory plan says
    assert len(eight["cache_specs"]) == 2 * cfg.num_layers
    assert all(s == eight["cache_specs"][0] for s in eight["cache_specs"])
    assert eight["cache_bytes"] == memory.kv_cache_bytes(
        cfg, {"data": 4, "fsdp": 1, "tensor": 2}, rows=8, slots=26)
