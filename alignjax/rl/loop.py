"""The online RL loop (`config.job = "rl"`): rollout -> advantages -> epochs of the train step.

Each iteration takes the next `prompts_per_iteration` training prompts, samples
`samples_per_prompt` responses of each with the current policy (`alignjax.rl.rollout`), scores
them, runs the reference (and critic) forwards, computes the algorithm's advantages and steps
the policy (and the critic) through the generic train step (`alignjax.steps`) for `epochs`
passes over `minibatches` shuffled minibatches. An algorithm is an entry of `ALGORITHMS`: its
advantage estimator and its objective (`alignjax.objectives`), not a trainer class.

KL to the reference: `config.loss.kl_estimator` (k1, k2, k3) per token, placed by
`config.kl.placement` in the reward ("reward": InstructGPT's per-token penalty for PPO, the
summed penalty on the sequence return for the others) or in the loss ("loss": GRPO's
`beta * kl` term); the coefficient `config.kl.coef` is fixed, or adapted towards
`config.kl.target` (nats per response, `losses.adaptive_kl_update`) when the target is > 0.

Workdir: config.json, metrics.jsonl (one row per iteration; eval/* rows at step 0 and at the
last iteration), eval.jsonl, samples/iter_<k>.jsonl, checkpoints/ (policy and critic states
with their optimisers, the rollout RNG; the KL controller, baseline and prompt position as
JSON), and with `config.export` the final policy in Hugging Face format (export/). The
sampler and the trainer use the same parameters: nothing is copied between them.
Re-running the same command resumes from the last checkpoint and logs exactly what an
uninterrupted run logs (time/* aside).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from alignjax import checkpoint, losses, models, objectives, sharding, steps
from alignjax import data as data_lib
from alignjax import evaluate as evaluate_lib
from alignjax import metrics as metrics_lib
from alignjax import workdir as workdir_lib
from alignjax.data import sentiment
from alignjax.rl import rewards
from alignjax.rl.rollout import RewardModel, Rollout, Rollouts
from alignjax.sampler import SamplingParams

Fields = dict[str, np.ndarray]


# ----------------------------------------------------------------------------- estimators


def _f64(x) -> np.ndarray:
    return np.asarray(jax.device_get(x))


def _token_kl(ro: Rollout, config) -> np.ndarray:
    return _f64(losses.kl_penalty(ro.logps, ro.ref_logps, ro.loss_mask,
                                  estimator=config.loss.kl_estimator))


def _reward_coef(ctl: dict, config) -> float:
    return ctl["kl_coef"] if config.kl.placement == "reward" else 0.0


def sequence_returns(ro: Rollout, ctl: dict, config) -> np.ndarray:
    """R = score - beta * sum_t KL_t with the KL in the reward, else the score."""
    return ro.scores - _reward_coef(ctl, config) * _token_kl(ro, config).sum(axis=1)


def ppo_estimate(ro: Rollout, ctl: dict, config) -> Fields:
    """Per-token rewards (score on the last token, -beta KL_t), GAE, whitened advantages."""
    rewards_BL = losses.shaped_rewards(ro.scores, _token_kl(ro, config), ro.loss_mask,
                                       kl_coef=_reward_coef(ctl, config))
    adv_BL, returns_BL = losses.gae(rewards_BL, ro.values, ro.loss_mask,
                                    gamma=config.gae.gamma, lam=config.gae.lam)
    if config.whiten_advantages:
        adv_BL = losses.masked_whiten(adv_BL, ro.loss_mask)
    return {"advantages": _f64(adv_BL), "old_values": ro.values,
            "value_targets": _f64(returns_BL), "rewards": _f64(rewards_BL)}


def grpo_estimate(ro: Rollout, ctl: dict, config) -> Fields:
    """Group-relative advantages of the sequence returns, the same on every response token."""
    adv_B = _f64(losses.grpo_advantages(sequence_returns(ro, ctl, config),
                                        group_size=config.samples_per_prompt,
                                        scale=config.scale_rewards))
    return {"advantages": (adv_B[:, None] * ro.loss_mask).astype(np.float32)}


def rloo_estimate(ro: Rollout, ctl: dict, config) -> Fields:
    """Returns and the leave-one-out mean of the other samples of the same prompt."""
    returns_B = sequence_returns(ro, ctl, config).astype(np.float32)
    k = config.samples_per_prompt
    grouped = returns_B.reshape(-1, k)
    baseline = (grouped.sum(axis=1, keepdims=True) - grouped) / (k - 1)
    return {"returns": returns_B, "baseline": baseline.reshape(-1).astype(np.float32)}


def reinforce_estimate(ro: Rollout, ctl: dict, config) -> Fields:
    """Returns and the running mean of past iterations' returns (this batch's at the first)."""
    returns_B = sequence_returns(ro, ctl, config).astype(np.float32)
    b = ctl["baseline"] if ctl["baseline"] is not None else float(returns_B.mean())
    return {"returns": returns_B, "baseline": np.full_like(returns_B, b)}


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """An RL algorithm: its advantage estimator and its policy objective (and a critic)."""

    estimate: Callable[[Rollout, dict, Any], Fields]
    objective: str
    critic: bool = False
    min_group: int = 1  # samples per prompt it needs


ALGORITHMS: dict[str, Algorithm] = {
    "ppo": Algorithm(ppo_estimate, "ppo", critic=True),
    "grpo": Algorithm(grpo_estimate, "grpo", min_group=2),
    "rloo": Algorithm(rloo_estimate, "rloo", min_group=2),
    "reinforce": Algorithm(reinforce_estimate, "reinforce"),
}


def update_controller(ctl: dict, ro: Rollout, fields: Fields, config) -> dict:
    """The KL coefficient (adaptive towards config.kl.target) and the REINFORCE baseline."""
    ctl = dict(ctl)
    if config.kl.target > 0:
        observed = float(np.mean(np.sum(ro.logps - ro.ref_logps, axis=1)))  # k1, per response
        ctl["kl_coef"] = float(losses.adaptive_kl_update(
            ctl["kl_coef"], observed, target=config.kl.target, horizon=config.kl.horizon,
            n_steps=len(ro.scores)))
    if "returns" in fields:
        mean = float(fields["returns"].mean())
        old = ctl["baseline"]
        d = config.baseline_decay
        ctl["baseline"] = mean if old is None else d * old + (1.0 - d) * mean
    return ctl


# ----------------------------------------------------------------------------- statistics


def _masked_var(x: np.ndarray, mask: np.ndarray) -> float:
    m = mask != 0
    return float(np.var(x[m])) if m.any() else 0.0


def rollout_metrics(ro: Rollout, fields: Fields) -> dict[str, float]:
    """Reward, KL to the reference (k1, k2, k3 per response), entropy, lengths, EOS."""
    mask = ro.loss_mask != 0
    lr = np.where(mask, ro.logps.astype(np.float64) - ro.ref_logps, 0.0)
    lengths = mask.sum(axis=1)
    out = {"rl/reward": float(ro.raw_scores.mean()), "rl/reward_std": float(ro.raw_scores.std()),
           "rl/score": float(ro.scores.mean()),
           "rl/kl_k1": float(lr.sum(axis=1).mean()),
           "rl/kl_k2": float((0.5 * lr**2).sum(axis=1).mean()),
           "rl/kl_k3": float(np.where(mask, np.expm1(-lr) + lr, 0.0).sum(axis=1).mean()),
           "rl/entropy": float(ro.entropy[mask].mean()),
           "rl/response_length": float(lengths.mean()),
           "rl/eos_fraction": float(ro.eos.mean())}
    if "value_targets" in fields:
        targets = fields["value_targets"]
        var = _masked_var(targets, ro.loss_mask)
        resid = _masked_var(targets - ro.values, ro.loss_mask)
        out["ppo/explained_variance"] = 1.0 - resid / var if var > 0 else 0.0
        out["ppo/value_mean"] = float(ro.values[mask].mean())
    return out


def mean_interval(x) -> tuple[float, float, float]:
    """Mean and its 95% normal interval."""
    x = np.asarray(x, np.float64)
    half = 1.959964 * x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else float("inf")
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


# ----------------------------------------------------------------------------- setup


def prompts_of(config) -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts) as `config.prompts` selects them:
    "embedded:movie_openings" (review openings, shuffled by `config.holdout_seed`) or
    "file:PATH" (the single-turn user prompts of a JSON / JSONL file of the "prompt" format, in
    file order; "shared:" in PATH is the shared data directory). The first
    `config.eval_prompts` are held out."""
    if config.prompts == "embedded:movie_openings":
        order = np.random.default_rng(config.holdout_seed).permutation(len(sentiment.OPENINGS))
        texts = [sentiment.OPENINGS[i] for i in order]
    elif config.prompts.startswith("file:"):
        texts = _file_prompts(config.prompts[len("file:"):])
    else:
        raise ValueError(f"config.prompts={config.prompts!r}: expected "
                         "'embedded:movie_openings' or 'file:PATH'")
    n = config.eval_prompts
    if not 0 < n < len(texts):
        raise ValueError(f"config.eval_prompts={n}: expected 0 < n < {len(texts)} (the "
                         f"prompts of config.prompts={config.prompts!r})")
    return texts[n:][:config.train_prompts or None], texts[:n]


def _file_prompts(path: str) -> list[str]:
    if path.startswith("shared:"):
        path = os.path.join(data_lib.shared_data_dir(), path[len("shared:"):])
    examples, _ = data_lib.load_examples(path, "prompt")
    out = []
    for e in examples:
        if len(e.prompt) != 1 or e.prompt[0]["role"] != "user":
            raise ValueError(f"{e.origin}: config.prompts needs single-turn user prompts")
        out.append(e.prompt[0]["content"])
    return out


def chat_of(config) -> Callable[[str], list[dict[str, str]]]:
    """The chat the policy answers for a prompt text of `prompts_of`: the review instruction
    for movie openings, the text as the one user turn for a file's prompts."""
    if config.prompts == "embedded:movie_openings":
        return sentiment.review_prompt
    return lambda text: [{"role": "user", "content": text}]


def prompts_at(openings: list[str], start: int, count: int, seed: int) -> list[str]:
    """`count` prompts from position `start` of an endless stream of reshuffled passes."""
    out = []
    for pos in range(start, start + count):
        epoch, i = divmod(pos, len(openings))
        out.append(openings[np.random.default_rng([seed, epoch]).permutation(len(openings))[i]])
    return out


def _check(config) -> Algorithm:
    if config.objective not in ALGORITHMS:
        raise ValueError(f"config.objective={config.objective!r}: expected one of "
                         f"{', '.join(ALGORITHMS)}")
    algo = ALGORITHMS[config.objective]
    if config.samples_per_prompt < algo.min_group:
        raise ValueError(f"config.samples_per_prompt={config.samples_per_prompt}: "
                         f"{config.objective} needs at least {algo.min_group} per prompt")
    if (config.temperature, config.top_k, config.top_p) != (1.0, 0, 1.0):
        raise ValueError(f"config.temperature={config.temperature}, config.top_k="
                         f"{config.top_k}, config.top_p={config.top_p}: the updates read the "
                         "model's log-probs at temperature 1 without truncation, so the "
                         "rollouts must be sampled from that distribution (1.0, 0, 1.0)")
    if config.kl.placement not in ("reward", "loss"):
        raise ValueError(f"config.kl.placement={config.kl.placement!r}: expected reward or loss")
    rows = config.prompts_per_iteration * config.samples_per_prompt
    if rows % config.minibatches or (rows // config.minibatches) % config.micro_batches:
        raise ValueError(f"config.minibatches={config.minibatches}, config.micro_batches="
                         f"{config.micro_batches}: must divide the {rows} rows of a rollout")
    return algo


def _reward(config, mesh, tokenizer):
    if not config.reward.startswith("model:"):
        return rewards.get(config.reward)
    path = config.reward[len("model:"):]
    model, _, rm_tokenizer = models.load({**config.model.to_dict(), "path": path}, mesh,
                                         head="scalar")
    if len(rm_tokenizer) != len(tokenizer):
        raise ValueError(f"config.reward={config.reward!r}: its tokenizer ({len(rm_tokenizer)} "
                         f"tokens) is not the policy's ({len(tokenizer)})")
    return RewardModel(model, mesh)


def _state(params, tx, seed, mesh):
    init = functools.partial(steps.init_state, tx=tx, seed=seed)
    shard = sharding.state_shardings(jax.eval_shape(init, params),
                                     jax.tree.map(lambda x: x.sharding, params), tx, mesh)
    return jax.jit(init, out_shardings=shard)(params), shard


def _trainer(graphdef, params, objective, lr, config, mesh):
    total = config.iterations * config.epochs * config.minibatches
    tx = steps.optimizer(total_steps=total, **{**config.optim.to_dict(), "learning_rate": lr})
    state, shard = _state(params, tx, config.seed, mesh)
    step = steps.make_train_step(graphdef, objective, tx, state_sharding=shard,
                                 batch_sharding=sharding.batch_sharding(mesh),
                                 frozen_sharding=None, micro_batches=config.micro_batches,
                                 mesh=mesh)
    return state, step


# ----------------------------------------------------------------------------- the loop


def _batch(ro: Rollout, fields: Fields, ctl: dict, config) -> Fields:
    rows = len(ro.scores)
    coef = ctl["kl_coef"] if config.kl.placement == "loss" else 0.0
    return {"input_ids": ro.input_ids, "attention_mask": ro.attention_mask,
            "loss_mask": ro.loss_mask, "old_logps": ro.logps, "ref_logps": ro.ref_logps,
            "kl_coef": np.full(rows, coef, np.float32),
            "max_tokens": np.full(rows, config.max_new_tokens, np.int32),
            **{k: v for k, v in fields.items() if k != "rewards"}}


def update(states: dict, train_steps: dict, batch: Fields, *, iteration: int, config, mesh
           ) -> tuple[dict, dict[str, float]]:
    """`config.epochs` passes of shuffled minibatches through each train step."""
    rows = len(batch["input_ids"])
    size = rows // config.minibatches
    results = {name: [] for name in states}
    for epoch in range(config.epochs):
        order = np.random.default_rng([config.seed, iteration, epoch]).permutation(rows)
        for m in range(config.minibatches):
            idx = order[m * size:(m + 1) * size]
            mb = evaluate_lib.to_device({k: v[idx] for k, v in batch.items()}, mesh)
            for name in states:
                states[name], metrics = train_steps[name](states[name], mb, None)
                results[name].append((jax.device_get(metrics), size))
    out = {}
    for name, res in results.items():
        merged = metrics_lib.merge_weighted(res)
        prefix = "" if name == "policy" else "critic/"
        out.update({prefix + k: v for k, v in merged.items()
                    if not k.endswith(("/sum", "/count"))})
    return states, out


def evaluate(rollouts: Rollouts, params, ref_params, prompt_ids, prompt_texts, config
             ) -> tuple[dict[str, float], list[dict]]:
    """Held-out reward (mean, 95% interval) and KL to the reference (k1 per response) of
    `eval_samples` samples of each held-out prompt, with a fixed RNG."""
    rows, scores, kls, eos = [], [], [], []
    size = config.prompts_per_iteration
    for start in range(0, len(prompt_ids), size):
        ids, texts = prompt_ids[start:start + size], prompt_texts[start:start + size]
        real = len(ids)
        ids, texts = ids + [ids[-1]] * (size - real), texts + [texts[-1]] * (size - real)
        key = jax.random.fold_in(jax.random.key(config.seed + 1), start)
        ro = rollouts.collect(params, ref_params, ids, texts, key, n=config.eval_samples)
        keep = slice(0, real * config.eval_samples)
        scores.append(ro.raw_scores[keep])
        kls.append((ro.logps - ro.ref_logps).sum(axis=1)[keep])
        eos.append(ro.eos[keep])
        rows += [{"prompt": p, "response": r, "reward": float(s), "kl": float(k)}
                 for p, r, s, k in zip(ro.prompts[keep], ro.responses[keep],
                                       ro.raw_scores[keep], kls[-1], strict=True)]
    scores, kls = np.concatenate(scores), np.concatenate(kls)
    mean, low, high = mean_interval(scores)
    kl, kl_low, kl_high = mean_interval(kls)
    return {"eval/reward": mean, "eval/reward_ci95_low": low, "eval/reward_ci95_high": high,
            "eval/kl": kl, "eval/kl_ci95_low": kl_low, "eval/kl_ci95_high": kl_high,
            "eval/eos_fraction": float(np.concatenate(eos).mean())}, rows


def _write_jsonl(path: str, rows: list[dict]) -> None:
    """Writes `rows` whole (a temporary file, then a rename); process 0 alone writes."""
    if not sharding.is_main_process():
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, path)


def _evaluated(path: str, step: int) -> dict | None:
    """The held-out metrics of `step` in eval.jsonl (the reference's are evaluated once)."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return next(({k: v for k, v in e.items() if k != "step"} for e in rows
                 if e["step"] == step), None)


class _Run:
    """What a run sets up once: models, rollouts, train steps, checkpointer."""

    def __init__(self, config, workdir: str):
        self.algo = _check(config)
        self.config = config
        self.policy_objective = objectives.make(self.algo.objective, config.loss.to_dict())
        self.train_openings, self.eval_openings = prompts_of(config)
        self.mesh = mesh = sharding.make_mesh(**config.mesh)
        model, cfg, self.tokenizer = models.load(config.model, mesh)
        graphdef, params = nnx.split(model)
        self.graphdef = graphdef
        del model
        self.ref_params = jax.tree.map(jnp.copy, params)  # frozen reference
        reward = _reward(config, mesh, self.tokenizer)
        critic_graphdef = critic_params = None
        if self.algo.critic:
            path = config.critic.path or config.model.path
            critic, _, _ = models.load({**config.model.to_dict(), "path": path}, mesh,
                                       head="scalar")
            critic_graphdef, critic_params = nnx.split(critic)
            del critic
        self.rollouts = Rollouts(
            graphdef, cfg, self.tokenizer, mesh, max_new_tokens=config.max_new_tokens,
            prompt_buckets=config.prompt_buckets,
            settings=SamplingParams(temperature=config.temperature, top_k=config.top_k,
                                    top_p=config.top_p),
            reward=reward, no_eos_penalty=config.no_eos_penalty,
            critic_graphdef=critic_graphdef)
        self.states, self.train_steps = {}, {}
        self.states["policy"], self.train_steps["policy"] = _trainer(
            graphdef, params, self.policy_objective, config.optim.learning_rate, config, mesh)
        if self.algo.critic:
            value = objectives.make("value", {"clip_eps": config.critic.clip_eps})
            self.states["critic"], self.train_steps["critic"] = _trainer(
                critic_graphdef, critic_params, value, config.critic.learning_rate, config,
                mesh)
        renderer = data_lib.ChatRenderer(self.tokenizer)
        chat = chat_of(config)
        self.encode = lambda text: self.tokenizer(
            renderer.prompt(chat(text)), add_special_tokens=False).input_ids
        self.eval_ids = [self.encode(o) for o in self.eval_openings]
        self.ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints,
                                            every=config.checkpoint_every)


def _iteration(run: _Run, it: int, rng, ctl: dict) -> tuple[Any, dict, dict, Rollout]:
    """One rollout and its updates; returns (rng, controller, metrics, rollout)."""
    config = run.config
    start = time.perf_counter()
    texts = prompts_at(run.train_openings, it * config.prompts_per_iteration,
                       config.prompts_per_iteration, config.seed)
    rng, key = jax.random.split(rng)
    ro = run.rollouts.collect(run.states["policy"].params, run.ref_params,
                              [run.encode(t) for t in texts], texts, key,
                              n=config.samples_per_prompt,
                              critic_params=run.states["critic"].params
                              if "critic" in run.states else None)
    fields = run.algo.estimate(ro, ctl, config)
    batch = _batch(ro, fields, ctl, config)
    t_update = time.perf_counter()
    run.states, update_metrics = update(run.states, run.train_steps, batch, iteration=it,
                                        config=config, mesh=run.mesh)
    jax.block_until_ready(run.states)
    metrics = {**rollout_metrics(ro, fields), **update_metrics, "rl/kl_coef": ctl["kl_coef"]}
    if "baseline" in fields:
        metrics["reinforce/baseline"] = float(fields["baseline"].mean())
    ctl = update_controller(ctl, ro, fields, config)
    for phase, name in (("sampling", "sampling"), ("scoring", "scoring"),
                        ("reference", "reference_forward"), ("policy", "policy_forward"),
                        ("critic", "critic_forward")):
        metrics[f"time/{name}"] = ro.seconds.get(phase, 0.0)
    metrics["time/updates"] = time.perf_counter() - t_update
    metrics["time/iteration"] = time.perf_counter() - start
    return rng, ctl, metrics, ro


def run(config, workdir: str) -> dict[str, float]:
    """Trains as the module docstring says; returns the last iteration's metrics."""
    main = sharding.is_main_process()  # writes files, logs and bars; every process computes
    if main:
        os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    r = _Run(config, workdir)
    # the rollout RNG, the same on every device of every process (checkpointed as a global array)
    rng = jax.jit(lambda: jax.random.key(config.seed),
                  out_shardings=sharding.replicated(r.mesh))()
    tree = {**r.states, "rng": rng}
    ctl = {"kl_coef": float(config.kl.coef), "baseline": None, "iteration": 0}
    restored = r.ckpt.restore(tree)
    if restored is not None:
        tree, ctl = restored
        r.states = {k: v for k, v in tree.items() if k != "rng"}
        if main:
            tqdm.write(f"resumed from iteration {ctl['iteration']}")
    rng, start = tree["rng"], ctl["iteration"]
    writer = metrics_lib.Writer(workdir, resume_step=start if start > 0 else -1)
    eval_path = os.path.join(workdir, "eval.jsonl")
    last = {}
    try:
        if start == 0:
            # a run killed before its first checkpoint has it; process 0's file decides
            held_out = _evaluated(eval_path, 0) if main else None
            if not sharding.process_0_says(held_out is not None):
                held_out, rows = evaluate(r.rollouts, r.states["policy"].params, r.ref_params,
                                          r.eval_ids, r.eval_openings, config)
                _write_jsonl(eval_path, [{"step": 0, **held_out}])
                _write_jsonl(os.path.join(workdir, "samples", "eval_0.jsonl"), rows)
            writer.write(0, held_out)
        bar = tqdm(total=config.iterations, initial=start, desc=config.objective, unit="iter",
                   disable=not main)
        for it in range(start, config.iterations):
            rng, ctl, metrics, ro = _iteration(r, it, rng, ctl)
            done = it + 1
            ctl["iteration"] = done
            ctl["prompt_position"] = done * config.prompts_per_iteration
            if done == config.iterations:
                held_out, rows = evaluate(r.rollouts, r.states["policy"].params, r.ref_params,
                                          r.eval_ids, r.eval_openings, config)
                metrics.update(held_out)
                if main:
                    with open(eval_path) as f:
                        evals = [json.loads(line) for line in f if line.strip()]
                    _write_jsonl(eval_path, [e for e in evals if e["step"] < done]
                                 + [{"step": done, **held_out}])
                _write_jsonl(os.path.join(workdir, "samples", f"eval_{done}.jsonl"), rows)
            if config.sample_every and (done % config.sample_every == 0 or done == 1):
                _write_jsonl(os.path.join(workdir, "samples", f"iter_{done}.jsonl"), [
                    {"prompt": p, "response": t, "reward": float(s)}
                    for p, t, s in zip(ro.prompts, ro.responses, ro.raw_scores, strict=True)])
            writer.write(done, metrics)
            r.ckpt.save(done, {**r.states, "rng": rng}, ctl, force=done == config.iterations)
            last = metrics
            bar.set_postfix(reward=f"{metrics['rl/reward']:.3f}", kl=f"{metrics['rl/kl_k1']:.2f}")
            bar.update(1)
        bar.close()
        if config.get("export", False) and (start < config.iterations or not os.path.isdir(
                os.path.join(workdir, "export"))):
            workdir_lib.export(nnx.merge(r.graphdef, r.states["policy"].params), r.tokenizer,
                               workdir, r.mesh)
        if start >= config.iterations:
            if main:
                tqdm.write(f"{workdir}: already trained {start} iterations; nothing to do")
            rows = [x for x in metrics_lib.read_metrics(workdir) if x["step"] == start]
            last = {k: v for x in rows for k, v in x.items() if k != "step"}
    finally:
        r.ckpt.close()
        writer.close()
    return last
