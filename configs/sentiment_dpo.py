"""The main job: DPO moves SmolLM2-135M-Instruct towards positive movie reviews, offline.

The controlled-sentiment task of the DPO paper: continue a movie-review opening; the true
reward is VADER's sentiment of the review, independent of the policy. The model samples 4
continuations of each of 176 training openings, VADER labels the best and the worst as a pair,
DPO trains on the pairs, and 64 held-out openings are sampled before and after.

Command (after `bash scripts/bootstrap.sh`):
  .venv/bin/python -m alignjax.main --config configs/sentiment_dpo.py --workdir runs/sentiment

Hardware: 2 CPU cores (float32); no network, no files outside the repository.
Result (experiments/RESULTS.md, "Main job"): held-out true reward 0.149 (95% CI 0.060 to
0.238) before, 0.271 (0.187 to 0.355) after 30 steps; gain over the reference paired by prompt
+0.122 (+0.024 to +0.220); KL to the reference 0.96 nats per response. About 18 minutes on 2
CPU cores that other jobs shared for half of it. Re-run at commit e60f352 (12 min 18 s, other
samples from the same seed): 0.173 -> 0.288, gain +0.115 (+0.010 to +0.221), KL 0.87 nats
("Iterative preference methods"). The run ends with that table and writes
workdir/reward_kl.png.
"""

from configs import common


def get_config(arg=None):
    objective = arg or "dpo"
    c = common.base(objective)
    c.job = "online_dpo"
    c.reward = "vader"
    c.prompts = "embedded:movie_openings"  # alignjax/data/sentiment.py
    c.train_prompts = 0  # 0: every opening not held out
    c.eval_prompts = 64
    c.samples_per_prompt = 4  # best and worst of 4 become a pair
    c.eval_samples = 2
    c.min_reward_gap = 0.05
    c.max_new_tokens = 32
    c.prompt_buckets = (32, 48)
    c.sample_batch = 16
    c.temperature = 1.0
    c.top_k = 0
    c.top_p = 1.0

    c.steps = 30
    c.batch_size = 8
    c.eval_batch_size = 8
    c.log_every = 5
    c.eval_every = 10
    c.eval_at_start = False
    c.checkpoint_every = 10
    c.keep_checkpoints = 8  # every checkpoint is judged by the true reward afterwards
    c.best_metric = "eval/dpo/accuracy" if objective != "kto" else "eval/kto/loss"
    c.best_mode = "max" if objective != "kto" else "min"
    c.data.train = ""  # the job writes workdir/pairs.jsonl and trains on it
    c.data.eval_size = 16  # held-out pairs for the implicit-reward metrics
    c.data.format = "preference"
    c.data.max_length = 96
    c.data.max_prompt_length = 48
    c.data.buckets = (96,)
    c.optim.learning_rate = 1e-5
    c.optim.warmup_steps = 4
    c.loss.beta = 0.1
    return c
