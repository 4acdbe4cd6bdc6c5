"""The one entry point: `python -m alignjax.main --config configs/<exp>.py --workdir DIR`.

The config's `job` picks what runs: "train" (the default, `alignjax.train.run`), "sample"
(`alignjax.sample_job.run`: completions of a prompt file into DIR/samples.jsonl),
"online_dpo" (`alignjax.online_dpo.run`), "rl" (`alignjax.rl.loop.run`: PPO, GRPO, RLOO,
REINFORCE), "best_of_n" (`alignjax.rl.best_of_n.run`) or "rejection_sampling"
(`alignjax.rejection_sampling.run`). The jobs that sample add
`alignjax.sampler.CPU_DECODE_XLA_FLAGS` to XLA_FLAGS (CPU decoding) unless XLA_FLAGS already
chooses the YNNPACK fusion types.

Any config leaf can be overridden: `--config.steps=100 --config.optim.learning_rate=1e-5`.
Multi-host runs call `jax.distributed.initialize()` first (`--distributed`).
"""

from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<exp>.py[:arg]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (resumed if it exists)")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize()")
flags.mark_flags_as_required(["config", "workdir"])


_DECODE_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE"
_SAMPLING_JOBS = ("sample", "online_dpo", "rl", "best_of_n", "rejection_sampling")


def main(argv):
    del argv
    job = _CONFIG.value.get("job", "train")
    flags_now = os.environ.get("XLA_FLAGS", "")
    if job in _SAMPLING_JOBS and "ynn_fusion_type" not in flags_now:  # before JAX starts
        os.environ["XLA_FLAGS"] = f"{flags_now} {_DECODE_FLAGS}".strip()
    import jax
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint file at INFO

    if _DISTRIBUTED.value:
        jax.distributed.initialize()
    if job == "train":
        from alignjax import train

        final = train.run(_CONFIG.value, _WORKDIR.value)
    elif job == "sample":
        from alignjax import sample_job

        final = sample_job.run(_CONFIG.value, _WORKDIR.value)
    elif job == "online_dpo":
        from alignjax import online_dpo

        final = online_dpo.run(_CONFIG.value, _WORKDIR.value)
    elif job == "rl":
        from alignjax.rl import loop

        final = loop.run(_CONFIG.value, _WORKDIR.value)
    elif job == "best_of_n":
        from alignjax.rl import best_of_n

        final = best_of_n.run(_CONFIG.value, _WORKDIR.value)
    elif job == "rejection_sampling":
        from alignjax import rejection_sampling

        final = rejection_sampling.run(_CONFIG.value, _WORKDIR.value)
    else:
        raise ValueError(f"config.job={job!r}: expected 'train', 'sample', 'online_dpo', 'rl', "
                         "'best_of_n' or 'rejection_sampling'")
    print(json.dumps(final, indent=2, sort_keys=True))


def cli():
    app.run(main)


if __name__ == "__main__":
    cli()
