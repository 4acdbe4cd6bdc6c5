"""Best-of-N: sample N responses per prompt, keep the one a reward scores highest.

    model, cfg, tokenizer = models.load({"path": "smollm2-135m-instruct"}, None)
    graphdef, params = nnx.split(model)
    generator = Generator(config, graphdef, cfg, tokenizer, None)  # config: sampling settings
    rows, rewards_PM = sample_and_score(generator, params, openings, n=32, seed=0,
                                        reward_fn=rewards.vader_sentiment)
    results = summarise(rewards_PM, ns=(1, 2, 4, 8, 16, 32))  # one dict per N
    best = select(rows, rewards_PM, n=4)                      # the best of the first 4

One sampling pass serves every N: the best of N is the best of a prompt's first N samples (of
M = max N), so the selections are nested and the selected reward never falls as N grows. Ties
go to the earliest sample (`np.argmax`).

KL to the base policy, two ways, both in nats:
  - `analytic_kl(n) = log n - (n - 1) / n`, the usual best-of-n value (e.g. Stiennon et al.,
    2020, appendix); exact when the reward of a sample has no atoms (no two responses score the
    same), an upper bound otherwise (Beirami et al., 2024, "Theoretical guarantees on the
    best-of-n alignment policy").
  - `empirical_kl(rewards_M, n)`, a plug-in estimate per prompt: the exact KL of best-of-n
    when the base policy is the empirical distribution of that prompt's M samples (best of n
    drawn with replacement from them). With distinct reward levels v_1 < ... < v_K, masses
    p_k and CDF F_k, best-of-n puts mass F_k^n - F_{k-1}^n on level k and, within a level,
    keeps the base policy's proportions, so KL = sum_k q_k log(q_k / p_k) with
    q_k = F_k^n - F_{k-1}^n. It sees the ties that the analytic value ignores (VADER scores
    many neutral continuations exactly 0) and is biased low as n approaches M (it cannot exceed
    log M). The reported value is its mean over prompts, with a 95% interval over prompts;
    that interval shows how the estimate varies between prompts, not its error as an estimate
    of the model's KL.

The job (`config.job = "best_of_n"`, `run`): M samples of each held-out opening ->
workdir/samples.jsonl (every sample with its reward), the selected responses for every N ->
workdir/selected.jsonl, one result row per N -> workdir/best_of_n.jsonl and results.md,
`sample_stats` -> workdir/sample_stats.jsonl, and workdir/best_of_n.png (reward against N and
against the KL). Samples already in the workdir are
reused.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from alignjax.rl import rewards
from alignjax.rl.generation import Generator, mean_interval, prompts_of, read_jsonl, write_jsonl

NS = (1, 2, 4, 8, 16, 32)


def analytic_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1) / n in nats (0 at n = 1)."""
    if n < 1:
        raise ValueError(f"n={n}: best-of-n needs n >= 1")
    return float(np.log(n) - (n - 1) / n)


def empirical_kl(rewards_M: np.ndarray, n: int) -> float:
    """The KL of best-of-n over the empirical distribution of one prompt's rewards (nats).

    See the module docstring; ties (equal rewards) form one level.
    """
    rewards_M = np.asarray(rewards_M, np.float64)
    _, counts_K = np.unique(rewards_M, return_counts=True)  # levels in increasing order
    p_K = counts_K / counts_K.sum()
    cdf_K = np.minimum(np.cumsum(p_K), 1.0)
    q_K = cdf_K ** n - np.concatenate([[0.0], cdf_K[:-1]]) ** n
    keep = q_K > 0
    return float(np.sum(q_K[keep] * np.log(q_K[keep] / p_K[keep])))


def best_indices(rewards_PM: np.ndarray, n: int) -> np.ndarray:
    """[P] index of the highest reward among each prompt's first `n` samples (earliest on ties)."""
    rewards_PM = np.asarray(rewards_PM)
    if rewards_PM.ndim != 2:
        raise ValueError(f"rewards_PM: expected [prompts, samples], got {rewards_PM.shape}")
    if not 1 <= n <= rewards_PM.shape[1]:
        raise ValueError(f"n={n}: expected 1 <= n <= {rewards_PM.shape[1]} samples per prompt")
    return np.argmax(rewards_PM[:, :n], axis=1)


def select(rows: list[dict], rewards_PM: np.ndarray, n: int) -> list[dict]:
    """The selected row of every prompt (rows are prompt-major, M per prompt)."""
    m = rewards_PM.shape[1]
    return [rows[i * m + int(j)] for i, j in enumerate(best_indices(rewards_PM, n))]


def summarise(rewards_PM: np.ndarray, ns: Sequence[int] = NS) -> list[dict]:
    """One row per N: mean selected reward (95% interval over prompts), analytic KL, empirical KL
    (mean over prompts, 95% interval)."""
    rewards_PM = np.asarray(rewards_PM, np.float64)
    out = []
    for n in ns:
        chosen_P = rewards_PM[np.arange(len(rewards_PM)), best_indices(rewards_PM, n)]
        mean, low, high = mean_interval(chosen_P)
        kl_P = np.array([empirical_kl(r, n) for r in rewards_PM])
        kl, kl_low, kl_high = mean_interval(kl_P)
        out.append({"n": int(n), "reward": mean, "reward_ci95_low": low,
                    "reward_ci95_high": high, "analytic_kl": analytic_kl(n),
                    "empirical_kl": kl, "empirical_kl_ci95_low": kl_low,
                    "empirical_kl_ci95_high": kl_high, "prompts": len(rewards_PM)})
    return out


def score(rows: list[dict], reward_fn: rewards.RewardFn) -> np.ndarray:
    """The reward of every row (float64), checked: one finite value per row."""
    values = np.asarray(reward_fn([r["prompt"] for r in rows], [r["response"] for r in rows]),
                        np.float64)
    if values.shape != (len(rows),):
        raise ValueError(f"reward function {getattr(reward_fn, '__name__', reward_fn)!r} "
                         f"returned shape {values.shape} for {len(rows)} responses")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"reward function {getattr(reward_fn, '__name__', reward_fn)!r} "
                         "returned a non-finite reward")
    return values


def sample_and_score(generator: Generator, params, openings: list[str], *, n: int, seed: int,
                     reward_fn: rewards.RewardFn, desc: str = "best-of-n samples"
                     ) -> tuple[list[dict], np.ndarray]:
    """`n` samples of every opening, each row given its `sample` index and `reward`; returns
    (rows, rewards [prompts, n])."""
    rows = generator(params, openings, n=n, seed=seed, desc=desc)
    values = score(rows, reward_fn)
    for i, (row, v) in enumerate(zip(rows, values, strict=True)):
        row["sample"], row["reward"] = i % n, float(v)
    return rows, values.reshape(len(openings), n)


def sample_stats(rows: list[dict], rewards_PM: np.ndarray) -> dict[str, float]:
    """What was sampled: mean reward of every sample (95% interval), the fraction that ended
    with a stop token, mean response tokens, distinct rewards per prompt."""
    mean, low, high = mean_interval(rewards_PM.ravel())
    return {"samples": len(rows), "reward_all": mean, "reward_all_ci95_low": low,
            "reward_all_ci95_high": high,
            "eos_fraction": float(np.mean([r["finish_reason"] == "stop" for r in rows])),
            "response_tokens": float(np.mean([r["tokens"] for r in rows])),
            "distinct_rewards_per_prompt": float(np.mean([len(np.unique(r))
                                                          for r in rewards_PM]))}


def table(results: list[dict]) -> str:
    lines = ["| N | reward (95% CI) | analytic KL (nats) | empirical KL (nats, 95% CI) |",
             "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['n']} | {r['reward']:.3f} ({r['reward_ci95_low']:.3f} to "
                     f"{r['reward_ci95_high']:.3f}) | {r['analytic_kl']:.3f} | "
                     f"{r['empirical_kl']:.3f} ({r['empirical_kl_ci95_low']:.3f} to "
                     f"{r['empirical_kl_ci95_high']:.3f}) |")
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    """Selected reward against N and against the KL to the base policy (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in results]
    reward = [r["reward"] for r in results]
    low = [r["reward_ci95_low"] for r in results]
    high = [r["reward_ci95_high"] for r in results]
    fig, (ax_n, ax_k) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_n.plot(ns, reward, "o-", color="tab:blue")
    ax_n.fill_between(ns, low, high, alpha=0.25, color="tab:blue")
    ax_n.set_xscale("log", base=2)
    ax_n.set(xlabel="N", ylabel="reward of the best (mean, 95% CI)", title="Best-of-N")
    err = np.array([np.subtract(reward, low), np.subtract(high, reward)])
    ax_k.errorbar([r["analytic_kl"] for r in results], reward, yerr=err, fmt="o-",
                  color="tab:blue", label="analytic KL")
    ax_k.errorbar([r["empirical_kl"] for r in results], reward, yerr=err, fmt="s--",
                  color="tab:red", label="empirical KL")
    ax_k.set(xlabel="KL(best-of-N || base) (nats)", ylabel="reward of the best",
             title="Reward against KL")
    ax_k.legend()
    for ax in (ax_n, ax_k):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config, workdir: str, reward_fn: rewards.RewardFn | None = None) -> dict:
    """Best-of-N on the held-out openings as the module docstring says; returns the result row
    of every N, by N.

    Config: model, mesh, prompts, eval_prompts, data.holdout_seed, seed, best_of_n (the Ns),
    reward (unless `reward_fn` is given) and the `Generator`'s sampling settings.
    """
    os.makedirs(workdir, exist_ok=True)
    reward_fn = reward_fn or rewards.get(config.reward)
    ns = tuple(int(n) for n in config.best_of_n)
    if not ns or min(ns) < 1 or list(ns) != sorted(set(ns)):
        raise ValueError(f"config.best_of_n={ns}: expected increasing integers >= 1")
    m = ns[-1]
    _, openings = prompts_of(config)
    samples_path = os.path.join(workdir, "samples.jsonl")
    if os.path.exists(samples_path):
        rows = read_jsonl(samples_path)
        if len(rows) != len(openings) * m or [r["prompt"] for r in rows[::m]] != openings:
            raise ValueError(f"{samples_path}: holds {len(rows)} samples, not {m} of each of "
                             f"the {len(openings)} held-out openings; use a new workdir")
        rewards_PM = np.array([r["reward"] for r in rows], np.float64).reshape(-1, m)
        tqdm.write(f"{samples_path}: reusing {len(rows)} samples")
    else:
        gen, _, params = Generator.from_config(config)
        t0 = time.time()
        rows, rewards_PM = sample_and_score(gen, params, openings, n=m, seed=config.seed,
                                            reward_fn=reward_fn)
        tqdm.write(f"sampled and scored {len(rows)} responses in {time.time() - t0:.0f} s")
        write_jsonl(samples_path, rows)
    results = summarise(rewards_PM, ns)
    write_jsonl(os.path.join(workdir, "best_of_n.jsonl"), results)
    write_jsonl(os.path.join(workdir, "selected.jsonl"), [
        {"n": n, **row} for n in ns for row in select(rows, rewards_PM, n)])
    plot(results, os.path.join(workdir, "best_of_n.png"))
    summary = table(results)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(summary + "\n")
    print(f"\nBest-of-N on {len(openings)} held-out prompts, {m} samples each, reward = "
          f"{getattr(reward_fn, '__name__', 'reward_fn')}")
    print(summary)
    stats = sample_stats(rows, rewards_PM)
    write_jsonl(os.path.join(workdir, "sample_stats.jsonl"), [stats])
    print(f"all {stats['samples']} samples: mean reward {stats['reward_all']:.3f} "
          f"({stats['reward_all_ci95_low']:.3f} to {stats['reward_all_ci95_high']:.3f}), "
          f"{stats['eos_fraction']:.1%} end with EOS, {stats['response_tokens']:.1f} tokens, "
          f"{stats['distinct_rewards_per_prompt']:.1f} distinct rewards per prompt")
    print(f"\nplot: {os.path.join(workdir, 'best_of_n.png')}")
    return {str(r["n"]): r for r in results}
