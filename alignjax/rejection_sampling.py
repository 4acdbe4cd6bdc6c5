"""Rejection-sampling fine-tuning (Llama 2): SFT on the best of N samples, iterated.

A job (`config.job = "rejection_sampling"`). Round r = 1 .. `config.rounds`, in workdir/round_r/:

  1. sample `samples_per_prompt` continuations of every training opening from the current
     model (round 1: `config.model.path`; round r: round r-1's trained model) and score them
     with the true reward -> samples.jsonl;
  2. keep the best of each prompt (`alignjax.rl.best_of_n.select`) -> kept.jsonl, in the sft
     data format (prompt, response; the reward beside them);
  3. SFT on kept.jsonl with the offline runner (`alignjax.train.run`, objective "sft"),
     starting from the current model -> train/ (checkpoints, export/: the next round's model);
  4. sample the held-out openings from the trained model (the same seed every round) and
     measure the true reward and the KL to the base model (sequence log-ratio on the model's
     own samples) -> eval_samples.jsonl; the round's summary -> round.json.

The base model is judged on the held-out openings first (workdir/base_eval.json). A round whose
round.json exists is not sampled, trained or judged again; an unfinished round reuses its
finished stages and the runner resumes its last checkpoint. The end: a table per round (reward
of all samples and of the kept ones, held-out reward before and after, KL) in results.md,
rounds.jsonl and rejection_sampling.png.
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
from tqdm.auto import tqdm

from alignjax import checkpoint, objectives, train
from alignjax.rl import best_of_n, rewards
from alignjax.rl.generation import (
    Generator,
    mean_interval,
    prompts_of,
    read_jsonl,
    user_turn,
    write_jsonl,
)


def _interval(prefix: str, x) -> dict[str, float]:
    mean, low, high = mean_interval(x)
    return {prefix: mean, f"{prefix}_ci95_low": low, f"{prefix}_ci95_high": high}


def held_out(rows: list[dict], reward_fn) -> dict[str, float]:
    """True reward and KL to the base model (mean, 95% interval) of held-out samples."""
    scores = best_of_n.score(rows, reward_fn)
    return {**_interval("reward", scores),
            **_interval("kl", [r["logp"] - r["ref_logp"] for r in rows]),
            "eos_fraction": float(np.mean([r["finish_reason"] == "stop" for r in rows])),
            "response_tokens": float(np.mean([r["tokens"] for r in rows]))}


def kept_pairs(rows: list[dict], rewards_PM: np.ndarray) -> list[dict]:
    """The best sample of every prompt as an sft-format row (prompt = the user turn)."""
    n = rewards_PM.shape[1]
    return [{"prompt": user_turn(r["prompt"]), "response": r["response"],
             "reward": r["reward"], "sample": r["sample"]}
            for r in best_of_n.select(rows, rewards_PM, n)]


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def sft_config(config, data_path: str, model_path: str):
    """The runner's config for one round: sft on `data_path`, starting from `model_path`."""
    c = copy.deepcopy(config)
    with c.unlocked():
        c.data.train = data_path
        c.data.format = "sft"
        c.data.eval = ""
        c.model.path = model_path
        c.export = True  # the next round starts from train/export
    return c


def table(base: dict, rounds: list[dict]) -> str:
    lines = ["| round | reward of all samples (95% CI) | reward of the kept (95% CI) | "
             "held-out reward (95% CI) | KL to base (nats) | ends with EOS |",
             "|---|---|---|---|---|---|"]

    def ci(r, k, fmt=".3f"):
        return (f"{r[k]:{fmt}} ({r[k + '_ci95_low']:{fmt}} to {r[k + '_ci95_high']:{fmt}})")

    lines.append(f"| 0 (base) | - | - | {ci(base, 'reward')} | {ci(base, 'kl', '.2f')} | "
                 f"{base['eos_fraction']:.0%} |")
    for r in rounds:
        h = r["held_out"]
        lines.append(f"| {r['round']} | {ci(r, 'sampled_reward')} | {ci(r, 'kept_reward')} | "
                     f"{ci(h, 'reward')} | {ci(h, 'kl', '.2f')} | {h['eos_fraction']:.0%} |")
    return "\n".join(lines)


def plot(base: dict, rounds: list[dict], path: str) -> None:
    """Held-out reward and the kept samples' reward per round (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held = [base, *[r["held_out"] for r in rounds]]
    xs = list(range(len(held)))
    fig, (ax_r, ax_k) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_r.plot(xs, [h["reward"] for h in held], "o-", color="tab:blue", label="held-out")
    ax_r.fill_between(xs, [h["reward_ci95_low"] for h in held],
                      [h["reward_ci95_high"] for h in held], alpha=0.25, color="tab:blue")
    ax_r.plot([r["round"] for r in rounds], [r["kept_reward"] for r in rounds], "s--",
              color="tab:green", label="kept (training prompts)")
    ax_r.set(xlabel="round", ylabel="true reward (mean, 95% CI)", title="Rejection sampling")
    ax_r.legend()
    ax_k.plot(xs, [h["kl"] for h in held], "o-", color="tab:red")
    ax_k.fill_between(xs, [h["kl_ci95_low"] for h in held], [h["kl_ci95_high"] for h in held],
                      alpha=0.25, color="tab:red")
    ax_k.set(xlabel="round", ylabel="nats per response", title="KL(model || base), held out")
    for ax in (ax_r, ax_k):
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _round(config, workdir: str, r: int, *, gen: Generator, params, ref_params, model_path,
           train_openings, eval_openings, reward_fn) -> dict:
    """Runs the unfinished stages of round `r` (module docstring); returns its summary.

    `params()` gives the current model's parameters (called only if the round samples);
    `model_path` is the checkpoint its SFT starts from.
    """
    rdir = os.path.join(workdir, f"round_{r}")
    os.makedirs(rdir, exist_ok=True)
    n = config.samples_per_prompt
    samples_path = os.path.join(rdir, "samples.jsonl")
    if not os.path.exists(samples_path):
        rows, _ = best_of_n.sample_and_score(gen, params(), train_openings, n=n,
                                             seed=config.seed + r, reward_fn=reward_fn,
                                             desc=f"round {r}: sampling")
        write_jsonl(samples_path, rows)
    rows = read_jsonl(samples_path)
    rewards_PM = np.array([s["reward"] for s in rows], np.float64).reshape(-1, n)
    kept_path = os.path.join(rdir, "kept.jsonl")
    if not os.path.exists(kept_path):
        write_jsonl(kept_path, kept_pairs(rows, rewards_PM))
    kept = read_jsonl(kept_path)
    tqdm.write(f"round {r}: kept {len(kept)} of {len(rows)} samples; mean reward "
               f"{np.mean([k['reward'] for k in kept]):.3f} (all: {rewards_PM.mean():.3f})")

    train_dir = os.path.join(rdir, "train")
    train.run(sft_config(config, kept_path, model_path), train_dir)
    trained = checkpoint.restore_params(os.path.join(train_dir, "checkpoints"), ref_params)
    eval_rows = gen(trained, eval_openings, n=config.eval_samples, seed=config.seed + 100_000,
                    ref_params=ref_params, desc=f"round {r}: held-out")
    write_jsonl(os.path.join(rdir, "eval_samples.jsonl"), eval_rows)
    summary = {"round": r, "samples": len(rows), "kept": len(kept),
               **_interval("sampled_reward", rewards_PM.ravel()),
               **_interval("kept_reward", [k["reward"] for k in kept]),
               "held_out": held_out(eval_rows, reward_fn)}
    _write_json(os.path.join(rdir, "round.json"), summary)
    return summary


def run(config, workdir: str, reward_fn: rewards.RewardFn | None = None) -> dict:
    """Iterates the rounds as the module docstring says; returns the base and last held-out
    results."""
    if config.objective != "sft":
        raise ValueError(f"config.objective={config.objective!r}: rejection sampling trains "
                         "with 'sft'")
    objectives.make(config.objective, config.loss.to_dict())  # bad loss keys fail now
    if config.rounds < 1 or config.samples_per_prompt < 1:
        raise ValueError(f"config.rounds={config.rounds}, config.samples_per_prompt="
                         f"{config.samples_per_prompt}: expected both >= 1")
    os.makedirs(workdir, exist_ok=True)
    reward_fn = reward_fn or rewards.get(config.reward)
    train_openings, eval_openings = prompts_of(config)
    gen, graphdef, ref_params = Generator.from_config(config)

    base_path = os.path.join(workdir, "base_eval.json")
    if not os.path.exists(base_path):
        rows = gen(ref_params, eval_openings, n=config.eval_samples, seed=config.seed + 100_000,
                   ref_params=ref_params, desc="base: held-out")
        write_jsonl(os.path.join(workdir, "base_eval_samples.jsonl"), rows)
        _write_json(base_path, held_out(rows, reward_fn))
    base = _read_json(base_path)

    rounds, model_path = [], config.model.path
    for r in range(1, config.rounds + 1):
        rdir = os.path.join(workdir, f"round_{r}")
        done = os.path.join(rdir, "round.json")
        if os.path.exists(done):
            rounds.append(_read_json(done))
            tqdm.write(f"round {r}: finished earlier ({done})")
        else:
            def params(r=r):  # the current model: the base, or the last round's checkpoint
                if r == 1:
                    return ref_params
                return checkpoint.restore_params(os.path.join(
                    workdir, f"round_{r - 1}", "train", "checkpoints"), ref_params)

            rounds.append(_round(config, workdir, r, gen=gen, params=params,
                                 ref_params=ref_params, model_path=model_path,
                                 train_openings=train_openings, eval_openings=eval_openings,
                                 reward_fn=reward_fn))
        model_path = os.path.join(rdir, "train", "export")

    write_jsonl(os.path.join(workdir, "rounds.jsonl"), rounds)
    plot(base, rounds, os.path.join(workdir, "rejection_sampling.png"))
    summary = table(base, rounds)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(summary + "\n")
    print(f"\nRejection sampling: {len(train_openings)} training prompts x "
          f"{config.samples_per_prompt} samples per round; held out: {len(eval_openings)} x "
          f"{config.eval_samples}")
    print(summary)
    print(f"\nplot: {os.path.join(workdir, 'rejection_sampling.png')}")
    return {"base": base, "last": rounds[-1]["held_out"], "rounds": len(rounds)}
