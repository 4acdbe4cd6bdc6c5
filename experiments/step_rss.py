"""Peak RSS of the compiled SFT step of configs/sft.py alone (zero state, one batch of ones).

    python experiments/step_rss.py

Compiles the step as the memory plan does (`memory.compile_step`, one CPU device), fills the
train state with zeros, then runs three steps and prints the process's peak resident memory
during each (sampled every 0.1 s) beside XLA's memory analysis. It separates the compiled
step's own memory from the rest of a training run (data, tokenizer, checkpoints, evaluation).
"""

import os
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from test_train import _load  # noqa: E402

from alignjax import memory, sharding  # noqa: E402


def rss() -> float:
    return memory.process_rss_bytes() / 1e9


def main():
    config = _load(os.path.join(REPO, "configs", "sft.py"))
    cfg = memory.model_config(config)
    mesh = sharding.make_mesh(1, 1, 1)
    print("baseline", rss(), flush=True)
    c = memory.compile_step(config, cfg, mesh, cfg.num_layers)
    print("compiled analysis (GB)", {k: v / 1e9 for k, v in c.items() if isinstance(v, int)},
          "rss", rss(), flush=True)
    shardings = jax.tree.map(lambda x: x.sharding, c["state"])

    def zeros():
        return jax.tree.map(lambda x: jax.random.key(0) if jax.dtypes.issubdtype(
            x.dtype, jax.dtypes.prng_key) else jnp.zeros(x.shape, x.dtype), c["state"])

    state = jax.jit(zeros, out_shardings=shardings)()
    jax.block_until_ready(state)
    print("state", memory.shard_bytes(c["state"]) / 1e9, "rss", rss(), flush=True)
    ids = jnp.asarray(np.ones((config.batch_size, config.data.max_length), np.int32))
    batch = {k: ids for k in c["batch"]}
    peak = [0.0]

    def watch():
        while True:
            peak[0] = max(peak[0], rss())
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True).start()
    for i in range(3):
        peak[0] = 0.0
        t = time.time()
        state, metrics = c["step"](state, batch, None)
        jax.block_until_ready(metrics)
        print(f"step {i}: {time.time() - t:.0f}s peak rss {peak[0]:.2f} after {rss():.2f}",
              flush=True)


if __name__ == "__main__":
    main()
