"""RSO's statistical rejection sampling on SmolLM2-135M-Instruct's samples: acceptance, reward.

    python experiments/rso_acceptance.py --workdir runs/rso_acceptance --prompts 64 --n 16

Samples `--n` continuations of each of `--prompts` training openings with the sampling
settings of configs/rso.py -> workdir/samples.jsonl (reused when it is there), scores them with
VADER, and for every beta accepts `--accept` of each prompt's candidates (`alignjax.rl.rso`,
the paper's Algorithm 1). Prints and writes (workdir/rso_acceptance.json, results.md) one row
per beta: the one-sweep acceptance rate (its expectation, mean exp((r - max r) / beta), and a
drawn rate with its Wilson interval), the mean reward of the accepted samples and of as many
drawn uniformly from the same candidates, and their difference paired by prompt (95%
intervals). Then the pairs RSO would train on (accepted samples paired in acceptance order,
VADER gap > config.min_reward_gap) are counted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np

from alignjax.rl import best_of_n, rewards, rso
from alignjax.rl.generation import Generator, prompts_of, read_jsonl, write_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
    sys.path.insert(0, REPO)
    spec = importlib.util.spec_from_file_location("rso_config",
                                                  os.path.join(REPO, "configs", "rso.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def table(results: list[dict]) -> str:
    def ci(r, k, fmt=".3f"):
        return f"{r[k]:{fmt}} ({r[k + '_ci95_low']:{fmt}} to {r[k + '_ci95_high']:{fmt}})"

    lines = ["| beta | one-sweep acceptance: expected, drawn (95% CI) | reward accepted "
             "(95% CI) | reward random (95% CI) | accepted - random, paired (95% CI) | pairs |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['beta']} | {r['acceptance_rate_expected']:.3f}, "
                     f"{ci(r, 'acceptance_rate')} | {ci(r, 'reward_accepted')} | "
                     f"{ci(r, 'reward_random')} | {ci(r, 'reward_gain', '+.3f')} | "
                     f"{r['pairs']} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--accept", type=int, default=4)
    p.add_argument("--betas", default="0.05,0.1,0.25,0.5,1.0")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    config = _config()
    with config.unlocked():
        config.train_prompts = args.prompts
    reward_fn = rewards.get(config.reward)
    path = os.path.join(args.workdir, "samples.jsonl")
    t0 = time.time()
    if not os.path.exists(path):
        train_openings, _ = prompts_of(config)
        gen, _, params = Generator.from_config(config)
        rows, _ = best_of_n.sample_and_score(gen, params, train_openings, n=args.n,
                                             seed=args.seed, reward_fn=reward_fn,
                                             desc="sampling")
        write_jsonl(path, rows)
    rows = read_jsonl(path)
    rewards_PN = np.array([r["reward"] for r in rows], np.float64).reshape(-1, args.n)
    sampled = time.time() - t0
    results = []
    for beta in (float(b) for b in args.betas.split(",")):
        rng = np.random.default_rng(args.seed)
        accepted = rso.select(rewards_PN, num_samples=args.accept, beta=beta, rng=rng)
        stats = rso.acceptance_stats(rewards_PN, beta=beta, accepted=accepted, rng=rng)
        stats["pairs"] = len(rso.pairs(rows, rewards_PN, accepted,
                                       min_gap=config.min_reward_gap))
        results.append(stats)
    summary = {"prompts": len(rewards_PN), "n": args.n, "accept": args.accept,
               "sampling_s": sampled,
               "distinct_rewards_per_prompt": float(np.mean([len(set(r)) for r in rewards_PN])),
               "results": results}
    with open(os.path.join(args.workdir, "rso_acceptance.json"), "w") as f:
        json.dump(summary, f, indent=2)
    text = table(results)
    with open(os.path.join(args.workdir, "results.md"), "w") as f:
        f.write(text + "\n")
    print(f"{len(rewards_PN)} prompts x {args.n} samples (VADER), {args.accept} accepted per "
          f"prompt; sampling {sampled:.0f} s; distinct rewards per prompt "
          f"{summary['distinct_rewards_per_prompt']:.1f}")
    print(text)


if __name__ == "__main__":
    main()
