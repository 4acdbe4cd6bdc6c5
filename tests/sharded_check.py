"""Run by tests/test_sharding.py in its own process, with 8 simulated CPU devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharded_check.py MODEL_DIR OUT

Loads a model into a data=2, fsdp=2, tensor=2 mesh, takes a train step and records the
PartitionSpec and the local shard shape of every leaf of the training state (parameters, both
Adam moments, counts) before and after it, with each parameter's logical axis names. On data=8,
fsdp=8 and fsdp=4 x tensor=2 meshes it records the sharding constraints of the lowered step and
forward (HLO) and the per-device bytes of the state; the step's metrics on 2x2x2 and on one
device. Then it runs the quickstart config on the 2x2x2 mesh (its metrics land in OUT/run). Writes
OUT/specs.json.
"""

import functools
import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alignjax import memory, models, objectives, sharding, steps, train

MESHES = {"data": (8, 1, 1), "fsdp": (1, 8, 1), "fsdp_tensor": (1, 4, 2),
          "data_tensor": (4, 1, 2)}


def describe(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    def spec(x):  # padded with None to the rank: [] and [None] both mean replicated
        axes = [a if a is None or isinstance(a, str) else list(a) for a in x.sharding.spec]
        return axes + [None] * (x.ndim - len(axes))

    return {jax.tree_util.keystr(path).removesuffix(".value"): {
                "spec": spec(x), "shape": list(x.shape), "bytes": x.nbytes,
                "shard": list(x.addressable_shards[0].data.shape)}
            for path, x in flat}


def constraints(hlo: str) -> list[list[str]]:
    """[shape, sharding] of every sharding constraint (`Sharding` custom call) in HLO text."""
    out = []
    for line in hlo.splitlines():
        if 'custom_call_target="Sharding"' in line:
            shape = re.search(r"= \w+\[([\d,]*)\]", line).group(1)
            out.append([shape, re.search(r"sharding=\{(.*?)\}", line).group(1)])
    return out


def setup(model_dir, abstract, mesh, batch):
    """(state, jitted step, device batch, graphdef) of one SFT step on `mesh`."""
    model, _ = models.load_pretrained(model_dir, shardings=sharding.param_shardings(abstract, mesh))
    graphdef, params = nnx.split(model)
    tx = steps.optimizer(learning_rate=1e-3, warmup_steps=0, total_steps=4)

    def init(p):
        return steps.init_state(p, tx, 0)

    state_sharding = sharding.state_shardings(jax.eval_shape(init, params),
                                              jax.tree.map(lambda x: x.sharding, params), tx, mesh)
    state = jax.jit(init, out_shardings=state_sharding)(params)
    bsh = sharding.batch_sharding(mesh)
    step = steps.make_train_step(graphdef, objectives.make("sft", {}), tx, mesh=mesh,
                                 state_sharding=state_sharding, batch_sharding=bsh,
                                 frozen_sharding=None)
    return state, step, {k: jax.device_put(v, bsh) for k, v in batch.items()}, graphdef


def apply(graphdef, params, input_ids_BL):
    return nnx.merge(graphdef, params)(input_ids_BL)


def scalars(metrics):
    return {k: float(metrics[k]) for k in ("train/loss", "train/grad_norm")}


def main(model_dir: str, out: str):
    assert jax.device_count() == 8, jax.devices()
    cfg = models.load_hf_config(model_dir)
    _, abstract = nnx.split(nnx.eval_shape(lambda: models.build(cfg)))
    logical = {jax.tree_util.keystr(path): list(var.get_metadata().get("out_sharding") or ())
               for path, var in jax.tree_util.tree_flatten_with_path(
                   abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]}
    rng = np.random.default_rng(0)
    ids = rng.integers(3, cfg.vocab_size, (8, 16)).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": np.ones_like(ids)}

    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    state, step, dbatch, graphdef = setup(model_dir, abstract, mesh, batch)
    before = describe(state)
    state, metrics = step(state, dbatch, None)
    after = describe(state)
    result = {"before": before, "after": after, "logical": logical,
              "mesh": dict(mesh.shape), "devices": jax.device_count(),
              "batch_spec": list(dbatch["input_ids"].sharding.spec),
              "metrics": {"data_fsdp_tensor": scalars(metrics)}, "constraints": {}, "bytes": {}}

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.test_train import _load, small

    # the plan of the same step: SFT, batch 8 x 16 tokens, the optimiser of `setup`
    plan_config = small(_load("configs/quickstart.py"), model_dir, steps=4)
    plan_config.batch_size, plan_config.data.max_length = 8, 16
    plan_config.optim.learning_rate, plan_config.optim.warmup_steps = 1e-3, 0
    one = sharding.make_mesh(data=1, devices=jax.devices()[:1])
    state, step, dbatch, graphdef = setup(model_dir, abstract, one, batch)
    result["metrics"]["one"] = scalars(step(state, dbatch, None)[1])
    for name, (data, fsdp, tensor) in MESHES.items():
        mesh = sharding.make_mesh(data=data, fsdp=fsdp, tensor=tensor)
        state, step, dbatch, graphdef = setup(model_dir, abstract, mesh, batch)
        lowered = step.lower(state, dbatch, None)
        # the step reads log-probs from hidden states; the logits are a forward's output
        forward = sharding.under(mesh, jax.jit(functools.partial(apply, graphdef)))
        result["constraints"][name] = {
            "step": constraints(lowered.as_text(dialect="hlo")),
            "forward": constraints(forward.lower(state.params, dbatch["input_ids"])
                                   .as_text(dialect="hlo"))}
        trained = {"params": state.params, "opt_state": state.opt_state}
        # the memory plan's abstract state and batch against the real arrays and the
        # compiled step's per-device argument bytes (no unexpected replication)
        planned = memory.abstract_step(plan_config, cfg, mesh, cfg.num_layers)
        analysis = lowered.compile().memory_analysis()
        result["bytes"][name] = {
            "per_device": sharding.per_device_bytes(trained),
            "total": sum(x.nbytes for x in jax.tree.leaves(trained)),
            "state_per_device": sharding.per_device_bytes(state),
            "batch_per_device": sharding.per_device_bytes(dbatch),
            "plan_state": memory.shard_bytes(planned["state"]),
            "plan_batch": memory.shard_bytes(planned["batch"]),
            "compiled_arguments": int(analysis.argument_size_in_bytes),
            "compiled_temp": int(analysis.temp_size_in_bytes)}

    # a dimension the mesh does not divide is replicated (3 key/value heads over tensor=2, a batch
    # of 2 over fsdp=4); the axes that divide it still shard it
    kv = sharding.under(sharding.make_mesh(data=1, fsdp=4, tensor=2), jax.jit(
        lambda x: sharding.constrain(x, ("act_batch", "act_length", "act_kv_heads", None))))
    result["constraints"]["indivisible"] = [
        c for shape in ((4, 16, 3, 16), (2, 16, 2, 16))
        for c in constraints(kv.lower(jnp.zeros(shape)).as_text(dialect="hlo"))]

    config = small(_load("configs/quickstart.py"), model_dir, steps=4)
    config.mesh = {"data": 2, "fsdp": 2, "tensor": 2}
    config.export = False
    train.run(config, os.path.join(out, "run"))
    with open(os.path.join(out, "specs.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend with the forced device count
    main(sys.argv[1], sys.argv[2])
