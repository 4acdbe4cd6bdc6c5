"""Run by tests/test_sharding.py in its own process, with 8 simulated CPU devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharded_check.py MODEL_DIR OUT

Loads a model into a data=2, fsdp=2, tensor=2 mesh, takes a train step and records the
PartitionSpec and the local shard shape of every parameter and Adam moment before and after it;
then runs the quickstart config on that mesh (its metrics land in OUT/run). Writes OUT/specs.json.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignjax import models, objectives, sharding, steps, train
from alignjax.models import checkpoint as ckpt


def describe(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    def spec(x):  # padded with None to the rank: [] and [None] both mean replicated
        axes = [a if a is None or isinstance(a, str) else list(a) for a in x.sharding.spec]
        return axes + [None] * (x.ndim - len(axes))

    return {jax.tree_util.keystr(path): {"spec": spec(x),
                                         "shape": list(x.shape),
                                         "shard": list(x.addressable_shards[0].data.shape)}
            for path, x in flat}


def main(model_dir: str, out: str):
    assert jax.device_count() == 8, jax.devices()
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    cfg = models.load_hf_config(model_dir)
    _, abstract = nnx.split(nnx.eval_shape(lambda: models.build(cfg)))
    with nnx.logical_axis_rules(sharding.DEFAULT_RULES):
        shardings = sharding.param_shardings(abstract, mesh)
    model, _ = ckpt.load_pretrained(model_dir, shardings=shardings)
    graphdef, params = nnx.split(model)
    tx = steps.optimizer(learning_rate=1e-3, warmup_steps=0, total_steps=4)
    def init(p):
        return steps.init_state(p, tx, 0)

    state_sharding = sharding.state_shardings(jax.eval_shape(init, params),
                                              jax.tree.map(lambda x: x.sharding, params), tx, mesh)
    state = jax.jit(init, out_shardings=state_sharding)(params)
    bsh = sharding.batch_sharding(mesh)
    step = steps.make_train_step(graphdef, objectives.make("sft", {}), tx,
                                 state_sharding=state_sharding, batch_sharding=bsh,
                                 frozen_sharding=None)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, cfg.vocab_size, (8, 16)).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": np.ones_like(ids)}
    batch = {k: jax.device_put(v, bsh) for k, v in batch.items()}
    before = {"params": describe(state.params), "mu": describe(state.opt_state[1][0].mu)}
    state, _ = step(state, batch, None)
    after = {"params": describe(state.params), "mu": describe(state.opt_state[1][0].mu)}
    batch_spec = list(batch["input_ids"].sharding.spec)

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.test_train import _load, small

    config = small(_load("configs/quickstart.py"), model_dir, steps=4)
    config.mesh = {"data": 2, "fsdp": 2, "tensor": 2}
    config.export = False
    train.run(config, os.path.join(out, "run"))
    with open(os.path.join(out, "specs.json"), "w") as f:
        json.dump({"before": before, "after": after, "batch_spec": batch_spec,
                   "devices": jax.device_count()}, f)


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend with the forced device count
    main(sys.argv[1], sys.argv[2])
