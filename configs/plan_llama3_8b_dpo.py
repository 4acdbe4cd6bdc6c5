"""Memory plan of a Llama-3-8B DPO run on 64 chips of 95 GB (no weights needed).

Command:
  python -m alignjax.main --config configs/plan_llama3_8b_dpo.py --workdir runs/plan_8b

The model's shapes are Llama-3-8B's config.json (`plan.hf_config`); the run is DPO with the
reference model in memory (`ref_cache=False`: policy plus a float32 copy as reference), AdamW,
bfloat16 compute, float32 master weights, a global batch of 64 pairs of 2,048 tokens, on a
data=1 x fsdp=64 x tensor=1 mesh. The train step is compiled on 64 simulated CPU devices with 1
and 2 layers and its temporaries extrapolated to 32 layers (`plan.compile_layers`).
Hardware: 2 CPU cores. Runtime: about 2 minutes. Result: see experiments/memory.md.
Any key can be changed, e.g. `--config.plan.mesh.fsdp=16 --config.plan.mesh.data=4` or
`--config.model.remat=full`.
"""

from configs import common

# https://huggingface.co/meta-llama/Meta-Llama-3-8B/blob/main/config.json (shapes only)
LLAMA3_8B = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
             "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 8, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
             "max_position_embeddings": 8192, "tie_word_embeddings": False}


def get_config(arg=None):
    del arg
    c = common.base("dpo")
    c.job = "plan"
    c.model.path = ""  # not read: the shapes come from plan.hf_config
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = "none"
    c.ref_cache = False
    c.batch_size = 64
    c.data.max_length = 2048
    c.plan.mesh = {"data": 1, "fsdp": 64, "tensor": 1}
    c.plan.device_memory_gb = 95.0
    c.plan.hf_config.update(LLAMA3_8B)
    c.plan.compile_layers = 1
    return c
