"""Rejection-sampling fine-tuning (Llama 2) of SmolLM2-135M-Instruct towards positive reviews.

Each round samples 4 continuations of 32 tokens of each of the 176 training openings, keeps the
best by VADER sentiment, and trains SFT on the kept (prompt, response) pairs, starting from the
previous round's model; the 64 held-out openings of configs/sentiment_dpo.py are judged before
and after every round (reward, KL to the base model). `alignjax/rejection_sampling.py` says
what each round writes.

Command:
  python -m alignjax.main --config configs/rejection_sampling.py --workdir runs/rejection

Hardware: 2 CPU cores (float32). Result: not measured yet (tests/test_best_of_n.py runs two
rounds on a tiny model); the run ends with a table per round and rejection_sampling.png.
"""

from configs import common


def get_config(arg=None):
    del arg
    c = common.base("sft")
    c.job = "rejection_sampling"
    c.reward = "vader"  # alignjax/rl/rewards.py
    c.prompts = "embedded:movie_openings"  # alignjax/data/sentiment.py
    c.train_prompts = 0  # 0: every opening not held out
    c.eval_prompts = 64
    c.rounds = 2
    c.samples_per_prompt = 4  # the best of these is kept
    c.eval_samples = 2
    c.max_new_tokens = 32
    c.prompt_buckets = (32, 48)
    c.sample_batch = 16
    c.temperature = 1.0
    c.top_k = 0
    c.top_p = 1.0

    c.steps = 20  # per round
    c.batch_size = 8
    c.log_every = 5
    c.eval_every = 20
    c.eval_at_start = False
    c.checkpoint_every = 10
    c.data.train = ""  # each round writes round_r/kept.jsonl and trains on it
    c.data.eval_size = 16  # held-out kept pairs for eval/sft/nll
    c.data.format = "sft"
    c.data.max_length = 96
    c.data.max_prompt_length = 48
    c.data.buckets = (96,)
    c.optim.learning_rate = 1e-5
    c.optim.warmup_steps = 2
    return c
