"""The one entry point: `python -m alignjax.main --config configs/<exp>.py --workdir DIR`.

Any config leaf can be overridden: `--config.steps=100 --config.optim.learning_rate=1e-5`.
Multi-host runs call `jax.distributed.initialize()` first (`--distributed`).
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<exp>.py[:arg]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (resumed if it exists)")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize()")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    import jax
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint file at INFO

    if _DISTRIBUTED.value:
        jax.distributed.initialize()
    from alignjax import train

    final = train.run(_CONFIG.value, _WORKDIR.value)
    print(json.dumps(final, indent=2, sort_keys=True))


def cli():
    app.run(main)


if __name__ == "__main__":
    cli()
