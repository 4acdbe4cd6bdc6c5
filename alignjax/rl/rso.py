"""Statistical rejection sampling (RSO; Liu et al. 2023, "Statistical Rejection Sampling
Improves Preference Optimization"): pairs drawn from the reward-tilted policy.

The optimal KL-regularised policy is pi*(y|x) ∝ pi(y|x) exp(r(x, y) / beta). With N candidates
y_1..y_N of a prompt sampled from pi, candidate i is accepted with probability
exp((r_i - max_j r_j) / beta) (`acceptance_probability`); the accepted ones are approximately
draws from pi* (exactly, when the maximum is the largest reward pi can produce). The paper's
Algorithm 1 (`select`) sweeps over the candidates not yet accepted, with the maximum of those
candidates, until `num_samples` are accepted (the best remaining one is always accepted, so
every sweep accepts at least one). `pairs` pairs the accepted samples in the order they were
accepted (1st with 2nd, ...) and the reward labels each pair.

    accepted = select(rewards_PN, num_samples=4, beta=0.5, rng=np.random.default_rng(0))
    stats = acceptance_stats(rewards_PN, beta=0.5, accepted=accepted, rng=rng)
    pairs_ = pairs(rows, rewards_PN, accepted, min_gap=0.05)   # rows: N per prompt, in order
"""

from __future__ import annotations

import numpy as np

from alignjax.evaluate import wilson_interval
from alignjax.rl.generation import mean_interval, user_turn


def check(beta: float, num_samples: int | None = None, n: int | None = None) -> None:
    """Fails on a beta that is not positive or a sample count outside 1 .. n (config keys)."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"config.rso.beta={beta!r}: expected a positive number")
    if num_samples is not None and not 1 <= num_samples <= n:
        raise ValueError(f"config.rso.num_samples={num_samples}: expected 1 to the "
                         f"{n} samples per prompt (config.samples_per_prompt)")


def acceptance_probability(rewards_N: np.ndarray, beta: float) -> np.ndarray:
    """[N] exp((r_i - max r) / beta): the chance each candidate is accepted in one sweep."""
    check(beta)
    rewards_N = np.asarray(rewards_N, np.float64)
    return np.exp((rewards_N - rewards_N.max()) / beta)


def select(rewards_PN: np.ndarray, *, num_samples: int, beta: float,
           rng: np.random.Generator) -> list[list[int]]:
    """Algorithm 1 of the paper for every prompt: `num_samples` candidate indices per prompt,
    in the order they were accepted (without replacement)."""
    rewards_PN = np.asarray(rewards_PN, np.float64)
    if rewards_PN.ndim != 2:
        raise ValueError(f"rewards_PN: expected [prompts, samples], got {rewards_PN.shape}")
    check(beta, num_samples, rewards_PN.shape[1])
    out = []
    for rewards_N in rewards_PN:
        left, accepted = list(range(len(rewards_N))), []
        while len(accepted) < num_samples:
            best = max(rewards_N[i] for i in left)
            taken = []
            for i in left:
                if rng.uniform() >= np.exp((rewards_N[i] - best) / beta):
                    continue
                accepted.append(i)
                taken.append(i)
                if len(accepted) == num_samples:
                    break
            left = [i for i in left if i not in taken]
        out.append(accepted)
    return out


def acceptance_stats(rewards_PN: np.ndarray, *, beta: float, accepted: list[list[int]],
                     rng: np.random.Generator) -> dict[str, float]:
    """Acceptance rate of one sweep (its exact expectation and a drawn rate with its Wilson
    interval) and the mean reward of the accepted samples against as many drawn uniformly at
    random from the same candidates (means, 95% intervals, and their difference paired by
    prompt)."""
    rewards_PN = np.asarray(rewards_PN, np.float64)
    probs_PN = np.stack([acceptance_probability(r, beta) for r in rewards_PN])
    drawn = rng.uniform(size=probs_PN.shape) < probs_PN
    low, high = wilson_interval(float(drawn.sum()), drawn.size)
    k = len(accepted[0])
    random_idx = [rng.choice(rewards_PN.shape[1], size=k, replace=False)
                  for _ in range(len(rewards_PN))]
    acc_P = np.array([rewards_PN[p, idx].mean() for p, idx in enumerate(accepted)])
    rnd_P = np.array([rewards_PN[p, idx].mean() for p, idx in enumerate(random_idx)])
    out = {"beta": float(beta), "prompts": len(rewards_PN), "candidates": int(rewards_PN.size),
           "accepted_per_prompt": k,
           "acceptance_rate_expected": float(probs_PN.mean()),
           "acceptance_rate": float(drawn.mean()), "acceptance_rate_ci95_low": low,
           "acceptance_rate_ci95_high": high}
    for name, values in (("reward_accepted", [rewards_PN[p, i] for p, idx in
                                              enumerate(accepted) for i in idx]),
                         ("reward_random", [rewards_PN[p, i] for p, idx in
                                            enumerate(random_idx) for i in idx]),
                         ("reward_all", rewards_PN.ravel()),
                         ("reward_gain", acc_P - rnd_P)):
        mean, lo, hi = mean_interval(np.asarray(values))
        out.update({name: mean, f"{name}_ci95_low": lo, f"{name}_ci95_high": hi})
    return out


def pairs(rows: list[dict], rewards_PN: np.ndarray, accepted: list[list[int]], *,
          min_gap: float) -> list[dict]:
    """Preference rows from the accepted samples, paired in acceptance order; the higher reward
    is chosen, and a pair whose rewards differ by `min_gap` or less is left out."""
    rewards_PN = np.asarray(rewards_PN, np.float64)
    n = rewards_PN.shape[1]
    if len(rows) != rewards_PN.size:
        raise ValueError(f"{len(rows)} rows for {rewards_PN.shape} rewards")
    out = []
    for p, idx in enumerate(accepted):
        for a, b in zip(idx[0::2], idx[1::2], strict=False):
            if rewards_PN[p, b] > rewards_PN[p, a]:
                a, b = b, a
            if rewards_PN[p, a] - rewards_PN[p, b] > min_gap:
                out.append({"prompt": user_turn(rows[p * n + a]["prompt"]),
                            "chosen": rows[p * n + a]["response"],
                            "rejected": rows[p * n + b]["response"],
                            "chosen_reward": float(rewards_PN[p, a]),
                            "rejected_reward": float(rewards_PN[p, b])})
    return out
