"""Completions of 32 AlpacaEval instructions by SmolLM2-135M-Instruct (or any checkpoint).

Command:
  python -m alignjax.main --config configs/sample.py --workdir runs/sample \
      [--config.model.path=runs/sft]  # a GGUF file, a Hugging Face directory or a run's workdir

Hardware: 2 CPU cores (float32). Writes DIR/samples.jsonl: one line per completion with the
prompt, the response, the finish reason ("stop" or "length") and the response's log-prob under
the model; tests/test_sample_job.py runs it on a tiny model.
"""

import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.job = "sample"
    c.seed = 0
    c.batch_size = 8  # prompts per compiled call (x n samples each)
    c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}

    c.model = ml_collections.ConfigDict()
    c.model.path = "smollm2-135m-instruct"
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"

    c.data = ml_collections.ConfigDict()
    c.data.prompts = "shared:alpaca_eval/alpaca_eval_reference_text_davinci_003.json"
    c.data.format = "alpaca_eval"  # any format with prompts (prompt, sft, hh_rlhf, ...)
    c.data.limit = 32  # the first N prompts; 0 = all
    c.data.truncation = "drop"  # prompts longer than the largest bucket: "drop" or "keep_end"
    c.data.on_malformed = "raise"

    c.sample = ml_collections.ConfigDict()
    c.sample.max_new_tokens = 128
    c.sample.temperature = 0.7  # 0 = greedy
    c.sample.top_k = 0
    c.sample.top_p = 0.95
    c.sample.min_p = 0.0
    c.sample.n = 1  # samples per prompt
    c.sample.prompt_buckets = (64, 128, 256)
    c.sample.stop_token_ids = ()  # () = the model's and the tokenizer's EOS
    return c
