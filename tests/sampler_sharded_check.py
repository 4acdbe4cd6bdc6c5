"""Run by tests/test_sampler_sharded.py in its own process, with 8 simulated CPU devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sampler_sharded_check.py \
        MODEL_DIR PROMPTS_JSON OUT_JSON

Loads the model onto a data=4 x tensor=2 mesh, samples the prompts greedily with the sampler
placed on that mesh, and writes the tokens, masks, model log-probs and the PartitionSpecs of
the result and of a KV cache filled by a prefill traced under the same mesh.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignjax import models, sharding
from alignjax.models.transformer import KVCache, segment_positions
from alignjax.sampler import GREEDY, make_sampler, pad_prompts


def spec(x):
    axes = [a if a is None or isinstance(a, str) else list(a) for a in x.sharding.spec]
    return axes + [None] * (x.ndim - len(axes))


def main(model_dir: str, prompts_file: str, out: str):
    assert jax.device_count() == 8, jax.devices()
    mesh = sharding.make_mesh(data=4, fsdp=1, tensor=2)
    cfg = models.load_hf_config(model_dir)
    _, abstract = nnx.split(nnx.eval_shape(lambda: models.build(cfg)))
    with nnx.logical_axis_rules(sharding.DEFAULT_RULES):
        shardings = sharding.param_shardings(abstract, mesh)
    model, cfg = models.load_pretrained(model_dir, shardings=shardings)
    graphdef, params = nnx.split(model)
    prompts = json.load(open(prompts_file))
    sampler = make_sampler(graphdef, cfg, max_new_tokens=10, prompt_buckets=(16,),
                           stop_token_ids=(), mesh=mesh)
    res = sampler(params, prompts, 0, GREEDY)

    ids, mask = pad_prompts(prompts, (16,), sampler.pad_token_id)
    ids, mask = jax.device_put((ids, mask), sharding.batch_sharding(mesh))

    @jax.jit
    def prefill(params, ids, mask):
        m = nnx.merge(graphdef, params)
        key_mask = jnp.concatenate([mask, jnp.ones((len(ids), 10), jnp.int32)], axis=1)
        return m.hidden_cached(ids, segment_positions(mask), key_mask,
                               KVCache.zeros(cfg, len(ids), 26), 0)[1]

    with sharding.use(mesh):
        cache = prefill(params, ids, mask)
    with open(out, "w") as f:
        json.dump({"tokens": np.asarray(res.tokens_BT).tolist(),
                   "mask": np.asarray(res.mask_BT).tolist(),
                   "model_logps": np.asarray(res.model_logps_BT).tolist(),
                   "tokens_spec": spec(res.tokens_BT), "cache_spec": spec(cache.k[0]),
                   "cache_shard": list(cache.k[0].addressable_shards[0].data.shape),
                   "cache_shape": list(cache.k[0].shape),
                   "cache_specs": [spec(x) for x in cache.k + cache.v],
                   "cache_bytes": sharding.per_device_bytes(cache)}, f)


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend with the forced device count
    main(*sys.argv[1:4])
