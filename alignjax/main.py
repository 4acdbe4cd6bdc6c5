"""The one entry point: `python -m alignjax.main --config configs/<exp>.py --workdir DIR`.

The config's `job` picks what runs: "train" (the default, `alignjax.train.run`), "sample"
(`alignjax.sample_job.run`: completions of a prompt file into DIR/samples.jsonl),
"online_dpo" (`alignjax.online_dpo.run`), "rl" (`alignjax.rl.loop.run`: PPO, GRPO, RLOO,
REINFORCE), "best_of_n" (`alignjax.rl.best_of_n.run`), "rejection_sampling"
(`alignjax.rejection_sampling.run`), "spin" (`alignjax.spin.run`), "aligner_train" /
"aligner_stack" (`alignjax.aligner`: the copy warm-up; correcting upstream answers and judging
them), "aligner_w2s" (`alignjax.aligner_w2s.run`: weak-to-strong training from an Aligner's
corrections) or "plan"
(`alignjax.memory.run`: the per-device memory plan of the config on `config.plan.mesh`, printed
and written to DIR/memory_plan.json; nothing is trained). The jobs that sample add
`alignjax.sampler.CPU_DECODE_XLA_FLAGS` to XLA_FLAGS (CPU decoding) unless XLA_FLAGS already
chooses the YNNPACK fusion types.

Any config leaf can be overridden: `--config.steps=100 --config.optim.learning_rate=1e-5`.
Multi-host runs: every process runs the same command with `--distributed` (JAX detects Cloud
TPU, SLURM, Open MPI and Kubernetes jobs), or also with `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID in the environment). See experiments/launch.md.
"""

from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<exp>.py[:arg]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (resumed if it exists)")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "join a multi-process run "
                                  "(jax.distributed.initialize) before anything else")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS", ""),
    "HOST:PORT of process 0 (implies --distributed)")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", int(os.environ.get("JAX_NUM_PROCESSES", 0)),
    "processes in the run (0: detected)")
_PROCESS_ID = flags.DEFINE_integer("process_id", int(os.environ.get("JAX_PROCESS_ID", -1)),
                                   "this process's index (-1: detected)")
flags.mark_flags_as_required(["config", "workdir"])


_DECODE_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE"
_SAMPLING_JOBS = ("sample", "online_dpo", "rl", "best_of_n", "rejection_sampling", "spin",
                  "aligner_train", "aligner_stack", "aligner_w2s")


def main(argv):
    del argv
    job = _CONFIG.value.get("job", "train")
    flags_now = os.environ.get("XLA_FLAGS", "")
    if job in _SAMPLING_JOBS and "ynn_fusion_type" not in flags_now:  # before JAX starts
        os.environ["XLA_FLAGS"] = f"{flags_now} {_DECODE_FLAGS}".strip()
    if job == "plan":  # the planned mesh, simulated on CPU devices (alignjax.memory)
        mesh = _CONFIG.value.plan.mesh
        count = int(mesh.data) * int(mesh.fsdp) * int(mesh.tensor)
        os.environ["XLA_FLAGS"] = (f"{flags_now} --xla_force_host_platform_device_count="
                                   f"{count}").strip()
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint file at INFO

    if _DISTRIBUTED.value or _COORDINATOR.value:
        from alignjax import sharding

        sharding.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if job == "plan":
        from alignjax import memory

        final = memory.run(_CONFIG.value, _WORKDIR.value)
        final = final["summary"]
    elif job == "train":
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
    elif job == "spin":
        from alignjax import spin

        final = spin.run(_CONFIG.value, _WORKDIR.value)
    elif job in ("aligner_train", "aligner_stack"):
        from alignjax import aligner

        run = aligner.run_train if job == "aligner_train" else aligner.run_stack
        final = run(_CONFIG.value, _WORKDIR.value)
    elif job == "aligner_w2s":
        from alignjax import aligner_w2s

        final = aligner_w2s.run(_CONFIG.value, _WORKDIR.value)
    else:
        raise ValueError(f"config.job={job!r}: expected 'train', 'sample', 'online_dpo', 'rl', "
                         "'best_of_n', 'rejection_sampling', 'spin', 'aligner_train', "
                         "'aligner_stack', 'aligner_w2s' or 'plan'")
    if jax.process_index() == 0:
        print(json.dumps(final, indent=2, sort_keys=True))


def cli():
    app.run(main)


if __name__ == "__main__":
    cli()
