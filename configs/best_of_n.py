"""Best-of-N of SmolLM2-135M-Instruct on the movie-review task, scored by VADER sentiment.

32 continuations of 32 tokens (temperature 1) of each of the 64 held-out openings of
configs/sentiment_dpo.py (same split: `data.holdout_seed`); for N = 1, 2, 4, 8, 16, 32 the best
of the first N by VADER; reported with the analytic and an empirical KL to the base policy
(`alignjax/rl/best_of_n.py` says how each is computed).

Command:
  python -m alignjax.main --config configs/best_of_n.py --workdir runs/best_of_n

Hardware: 2 CPU cores (float32). Writes samples.jsonl, selected.jsonl, best_of_n.jsonl,
results.md (the table) and best_of_n.png into the workdir; tests/test_best_of_n.py runs it on a
tiny model.
Measured (commit ab29702, with --config.eval_prompts=32, the first 32 of the 64 held-out
openings; 12 min 27 s on 2 CPU cores shared with other jobs, 675 s of it sampling): mean VADER
reward of the best 0.099 (N=1, 95% CI -0.075 to 0.272), 0.405 (2), 0.576 (4), 0.687 (8),
0.809 (16), 0.844 (32, 0.791 to 0.896); empirical KL 0.189, 0.627, 1.196, 1.822, 2.454 nats
against the analytic 0.193, 0.636, 1.204, 1.835, 2.497 (experiments/best_of_n_smollm2.png).
"""

import ml_collections


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.job = "best_of_n"
    c.seed = 0
    c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
    c.reward = "vader"  # alignjax/rl/rewards.py
    c.prompts = "embedded:movie_openings"  # alignjax/data/sentiment.py
    c.train_prompts = 0  # unused here; the held-out openings are the first `eval_prompts`
    c.eval_prompts = 64
    c.best_of_n = (1, 2, 4, 8, 16, 32)  # one pass of max(N) samples serves every N
    c.max_new_tokens = 32
    c.prompt_buckets = (32, 48)
    c.sample_batch = 8  # prompts per compiled call (x max(N) samples each)
    c.temperature = 1.0
    c.top_k = 0
    c.top_p = 1.0

    c.model = ml_collections.ConfigDict()
    c.model.path = "smollm2-135m-instruct"
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"

    c.data = ml_collections.ConfigDict()
    c.data.holdout_seed = 0  # as configs/sentiment_dpo.py: the same held-out openings
    return c
