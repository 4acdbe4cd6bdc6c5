"""Preference optimisation on pairs the policy samples and a reward labels, then judged.

Online DPO as a job (`config.job = "online_dpo"`), in `config.rounds` rounds (default 1):

  1. sample `samples_per_prompt` continuations of every training prompt of the round from the
     round's policy (the model in round 1; the training prompts are split evenly over rounds);
  2. score them with the true reward (`config.reward`, e.g. VADER sentiment) and keep the best
     and the worst of each prompt as a (chosen, rejected) pair -> workdir/pairs.jsonl; with
     `config.pairs = "self"`, score them by the policy's own judgement instead (self-rewarding,
     `alignjax.rl.self_judge`; its agreement with the true reward -> workdir/self_judge.json); or,
     with `config.pairs = "rso"`, accept `config.rso.num_samples` of each prompt's samples by
     statistical rejection sampling with `config.rso.beta` and pair those (`alignjax.rl.rso`;
     acceptance rate and reward of the accepted against random samples ->
     workdir/rso_stats.json);
  3. train on the pairs with the offline runner (`alignjax.train.run`, any loss of the DPO
     family; the reference is the round's starting policy) -> workdir/train/ (checkpoints every
     `checkpoint_every` steps, the exported policy the next round starts from);
  4. for the reference and every checkpoint, sample the held-out prompts and measure the true
     reward (mean, 95% interval), the KL to the reference (sequence log-ratio on the policy's
     own samples, whose expectation is KL(policy || reference)) and the win rate against the
     reference's samples -> workdir/eval.jsonl, a table, workdir/reward_kl.png.

With several rounds, each round's files (steps 1-3) are in workdir/round_<k>/, and step 4 judges
the policy at the end of every round (at step k * steps) against the initial model.

Every stage is resumable: a finished stage's file is reused, the runner resumes from its last
checkpoint, and evaluated steps are not evaluated again.
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
from tqdm.auto import tqdm

from alignjax import checkpoint, objectives, train
from alignjax.evaluate import wilson_interval
from alignjax.rl import rewards, rso, self_judge
from alignjax.rl.generation import Generator, mean_interval, prompts_of, user_turn
from alignjax.rl.generation import read_jsonl as _read_jsonl
from alignjax.rl.generation import write_jsonl as _write_jsonl

PAIR_RULES = ("best_worst", "rso", "self")


def pair_rows(scores: np.ndarray, n: int, min_gap: float) -> list[tuple[int, int]]:
    """(best, worst) row indices of each prompt's `n` consecutive samples, where they differ
    by more than `min_gap` in score."""
    out = []
    for i in range(0, len(scores), n):
        group = np.asarray(scores[i:i + n])
        best, worst = int(np.argmax(group)), int(np.argmin(group))
        if group[best] - group[worst] > min_gap:
            out.append((i + best, i + worst))
    return out


def make_pairs(rows: list[dict], scores: np.ndarray, n: int, min_gap: float) -> list[dict]:
    """The best and the worst of each prompt's `n` consecutive samples, if they differ by more
    than `min_gap` in reward."""
    return [{"prompt": user_turn(rows[b]["prompt"]), "chosen": rows[b]["response"],
             "rejected": rows[w]["response"], "chosen_reward": float(scores[b]),
             "rejected_reward": float(scores[w])}
            for b, w in pair_rows(scores, n, min_gap)]


def judge(rows: list[dict], reference_rows: list[dict], reward_fn) -> dict[str, float]:
    """True reward, its gain over the reference's samples (the mean over prompts of the
    per-prompt difference, with its 95% interval), KL to the reference and win rate."""
    scores = reward_fn([r["prompt"] for r in rows], [r["response"] for r in rows])
    ref_scores = reward_fn([r["prompt"] for r in reference_rows],
                           [r["response"] for r in reference_rows])
    mean, low, high = mean_interval(scores)
    # paired by prompt: rows and reference rows hold the same prompts in the same order
    prompts = [r["prompt"] for r in rows]
    if prompts != [r["prompt"] for r in reference_rows]:
        raise ValueError("judge: the samples and the reference samples hold other prompts")
    groups = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    gain = np.array([scores[ix].mean() - ref_scores[ix].mean() for ix in groups.values()])
    gain_mean, gain_low, gain_high = mean_interval(gain)
    kl = np.array([r["logp"] - r["ref_logp"] for r in rows])
    kl_mean, kl_low, kl_high = mean_interval(kl)
    wins = float(np.sum(scores > ref_scores) + 0.5 * np.sum(scores == ref_scores))
    win_low, win_high = wilson_interval(wins, len(scores))
    return {"reward": mean, "reward_ci95_low": low, "reward_ci95_high": high,
            "gain": gain_mean, "gain_ci95_low": gain_low, "gain_ci95_high": gain_high,
            "kl": kl_mean, "kl_ci95_low": kl_low, "kl_ci95_high": kl_high,
            "win_rate": wins / len(scores), "win_rate_ci95_low": win_low,
            "win_rate_ci95_high": win_high,
            "eos_fraction": float(np.mean([r["finish_reason"] == "stop" for r in rows])),
            "response_tokens": float(np.mean([r["tokens"] for r in rows]))}


def plot(results: list[dict], path: str) -> None:
    """Held-out true reward and KL to the reference against training steps (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in results]
    fig, (ax_r, ax_k) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_r.plot(steps, [r["reward"] for r in results], "o-", color="tab:blue")
    ax_r.fill_between(steps, [r["reward_ci95_low"] for r in results],
                      [r["reward_ci95_high"] for r in results], alpha=0.25, color="tab:blue")
    ax_r.set(xlabel="DPO step", ylabel="true reward (mean, 95% CI)",
             title="Held-out true reward")
    ax_k.plot(steps, [r["kl"] for r in results], "o-", color="tab:red")
    ax_k.fill_between(steps, [r["kl_ci95_low"] for r in results],
                      [r["kl_ci95_high"] for r in results], alpha=0.25, color="tab:red")
    ax_k.set(xlabel="DPO step", ylabel="nats per response", title="KL(policy || reference)")
    for ax in (ax_r, ax_k):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: list[dict]) -> str:
    lines = ["| step | true reward (95% CI) | gain over reference, paired by prompt (95% CI) "
             "| KL to reference (nats) | win rate vs reference | ends with EOS | tokens |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        gain = (f"{r['gain']:+.3f} ({r['gain_ci95_low']:+.3f} to {r['gain_ci95_high']:+.3f})"
                if "gain" in r else "-")
        lines.append(
            f"| {r['step']} | {r['reward']:.3f} ({r['reward_ci95_low']:.3f} to "
            f"{r['reward_ci95_high']:.3f}) | {gain} | {r['kl']:.2f} ({r['kl_ci95_low']:.2f} to "
            f"{r['kl_ci95_high']:.2f}) | {r['win_rate']:.1%} ({r['win_rate_ci95_low']:.1%} to "
            f"{r['win_rate_ci95_high']:.1%}) | {r['eos_fraction']:.0%} | "
            f"{r['response_tokens']:.1f} |")
    return "\n".join(lines)


def _rso_pairs(config, rows: list[dict], scores: np.ndarray, workdir: str) -> list[dict]:
    """Pairs of the samples that statistical rejection sampling accepts; its statistics go to
    workdir/rso_stats.json (written before the pairs, so a finished sampling stage has both)."""
    rewards_PN = np.asarray(scores, np.float64).reshape(-1, config.samples_per_prompt)
    rng = np.random.default_rng(config.seed)
    accepted = rso.select(rewards_PN, num_samples=config.rso.num_samples,
                          beta=config.rso.beta, rng=rng)
    stats = rso.acceptance_stats(rewards_PN, beta=config.rso.beta, accepted=accepted, rng=rng)
    pairs = rso.pairs(rows, rewards_PN, accepted, min_gap=config.min_reward_gap)
    stats["pairs"] = len(pairs)
    with open(os.path.join(workdir, "rso_stats.json"), "w") as f:
        json.dump(stats, f, indent=2)
    tqdm.write(f"rejection sampling (beta {config.rso.beta}): one-sweep acceptance rate "
               f"{stats['acceptance_rate']:.3f}; mean reward accepted "
               f"{stats['reward_accepted']:.3f}, random {stats['reward_random']:.3f}")
    return pairs


def _check(config) -> tuple[int, str]:
    """(rounds, pair rule), failing early with the config key."""
    objectives.make(config.objective, config.loss.to_dict())  # bad loss keys fail now
    rule = config.get("pairs", "best_worst")
    if rule not in PAIR_RULES:
        raise ValueError(f"config.pairs={rule!r}: expected one of {PAIR_RULES}")
    if rule == "rso":
        rso.check(config.rso.beta, config.rso.num_samples, config.samples_per_prompt)
    rounds = int(config.get("rounds", 1))
    if rounds < 1:
        raise ValueError(f"config.rounds={rounds}: expected >= 1")
    if rounds > 1 and not config.export:
        raise ValueError("config.export=False: rounds after the first start from the "
                         "previous round's exported policy; set config.export=True")
    return rounds, rule


def _self_pairs(config, judge_fn, params, rows, true_scores, workdir) -> list[dict]:
    """Best-and-worst pairs by the model's own judgement (`alignjax.rl.self_judge`); its
    agreement with the true reward goes to workdir/self_judge.json."""
    judged = judge_fn(params, [user_turn(r["prompt"]) for r in rows],
                      [r["response"] for r in rows])
    stats = self_judge.agreement(judged, true_scores, config.samples_per_prompt)
    pairs = make_pairs(rows, judged, config.samples_per_prompt, config.min_reward_gap)
    picked = pair_rows(judged, config.samples_per_prompt, config.min_reward_gap)
    for p, i in zip(pairs, picked, strict=True):
        p["chosen_true_reward"], p["rejected_true_reward"] = (float(true_scores[i[0]]),
                                                              float(true_scores[i[1]]))
    stats["pairs_made"] = len(pairs)
    stats["pair_true_agreement"] = float(np.mean(
        [p["chosen_true_reward"] > p["rejected_true_reward"] for p in pairs])) if pairs else 0.0
    stats["mean_rating"] = float(np.mean(judged))
    with open(os.path.join(workdir, "self_judge.json"), "w") as f:
        json.dump(stats, f, indent=2)
    tqdm.write(f"self judge: agrees with {config.reward} on {stats['agreement']:.1%} "
               f"({stats['agreement_ci95_low']:.1%} to {stats['agreement_ci95_high']:.1%}) of "
               f"{stats['pairs']} sample pairs; its chosen answer has the higher true reward in "
               f"{stats['pair_true_agreement']:.1%} of {len(pairs)} training pairs")
    return pairs


def _round_dirs(workdir: str, rounds: int) -> list[str]:
    """One round: the workdir itself; several: workdir/round_<k>."""
    if rounds == 1:
        return [workdir]
    return [os.path.join(workdir, f"round_{k}") for k in range(1, rounds + 1)]


def run(config, workdir: str) -> dict:
    """Samples, labels, trains and judges as the module docstring says; returns the results."""
    os.makedirs(workdir, exist_ok=True)
    rounds, rule = _check(config)
    reward_fn = rewards.get(config.reward)
    train_openings, eval_openings = prompts_of(config)
    per_round = len(train_openings) // rounds
    if per_round == 0:
        raise ValueError(f"config.rounds={rounds}: more rounds than the "
                         f"{len(train_openings)} training prompts")
    gen, graphdef, ref_params = Generator.from_config(config)
    judge_fn = None
    if rule == "self":
        judge_fn = self_judge.SelfJudge(graphdef, gen.tokenizer, config.self_judge.criterion,
                                        gen.mesh, batch=config.sample_batch,
                                        buckets=tuple(config.self_judge.buckets))

    params, model_path, finals = ref_params, config.model.path, []
    for k, rdir in enumerate(_round_dirs(workdir, rounds)):
        os.makedirs(rdir, exist_ok=True)
        openings = train_openings[k * per_round:(k + 1) * per_round]
        pairs_path = os.path.join(rdir, "pairs.jsonl")
        if not os.path.exists(pairs_path):  # sampled from this round's starting policy
            rows = gen(params, openings, n=config.samples_per_prompt, seed=config.seed + k,
                       desc=f"sampling pairs{f', round {k + 1}' if rounds > 1 else ''}")
            scores = reward_fn([r["prompt"] for r in rows], [r["response"] for r in rows])
            if rule == "rso":
                pairs = _rso_pairs(config, rows, scores, rdir)
            elif rule == "self":
                pairs = _self_pairs(config, judge_fn, params, rows, scores, rdir)
            else:
                pairs = make_pairs(rows, scores, config.samples_per_prompt,
                                   config.min_reward_gap)
            _write_jsonl(pairs_path, pairs)
        pairs = _read_jsonl(pairs_path)
        tqdm.write(f"{len(pairs)} pairs from {len(openings)} prompts; mean reward chosen "
                   f"{np.mean([p['chosen_reward'] for p in pairs]):.3f}, rejected "
                   f"{np.mean([p['rejected_reward'] for p in pairs]):.3f}")
        run_config = copy.deepcopy(config)
        with run_config.unlocked():
            run_config.data.train = pairs_path
            run_config.data.format = "preference"
            run_config.model.path = model_path  # the reference is the round's start
        train_dir = os.path.join(rdir, "train")
        train.run(run_config, train_dir)
        if rounds > 1:  # the next round samples from, and starts at, this round's policy
            params = checkpoint.restore_params(os.path.join(train_dir, "checkpoints"),
                                               ref_params, config.steps)
            model_path = os.path.join(train_dir, "export")
            finals.append(((k + 1) * config.steps, train_dir, config.steps))

    eval_path = os.path.join(workdir, "eval.jsonl")
    done = {r["step"]: r for r in (_read_jsonl(eval_path) if os.path.exists(eval_path) else [])}
    if rounds == 1:  # every checkpoint of the one run
        ckpt_dir = os.path.join(workdir, "train", "checkpoints")
        finals = [(s, os.path.join(workdir, "train"), s) for s in sorted(
            s for s in (int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
            if s % config.checkpoint_every == 0 or s == config.steps)]
    where = {step: (tdir, local) for step, tdir, local in finals}
    steps = [0, *where]
    reference_rows = gen(ref_params, eval_openings, n=config.eval_samples,
                         seed=config.seed + 1, ref_params=ref_params, desc="eval step 0")
    samples = {0: reference_rows}
    for step in steps:
        if step in done and step not in (0, steps[-1]):
            continue
        params = ref_params if step == 0 else checkpoint.restore_params(
            os.path.join(where[step][0], "checkpoints"), ref_params, where[step][1])
        rows = reference_rows if step == 0 else gen(
            params, eval_openings, n=config.eval_samples, seed=config.seed + 1,
            ref_params=ref_params, desc=f"eval step {step}")
        samples[step] = rows
        if step not in done:
            done[step] = {"step": step, **judge(rows, reference_rows, reward_fn)}
            _write_jsonl(eval_path, [done[s] for s in sorted(done)])
    results = [done[s] for s in steps if s in done]
    final = steps[-1]
    before, after = samples[0], samples[final]
    b_scores = reward_fn([r["prompt"] for r in before], [r["response"] for r in before])
    a_scores = reward_fn([r["prompt"] for r in after], [r["response"] for r in after])
    _write_jsonl(os.path.join(workdir, "samples.jsonl"), [
        {"prompt": b["prompt"], "reference": b["response"], "reference_reward": float(bs),
         "trained": a["response"], "trained_reward": float(as_)}
        for b, a, bs, as_ in zip(before, after, b_scores, a_scores, strict=True)])
    plot(results, os.path.join(workdir, "reward_kl.png"))
    summary = table(results)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(summary + "\n")
    print("\nHeld-out prompts: " + str(len(eval_openings)) + f" x {config.eval_samples} "
          "samples each, true reward = " + config.reward)
    print(summary)
    print("\nSamples (reference -> trained):")
    for b, a, bs, as_ in list(zip(before, after, b_scores, a_scores, strict=True))[:4]:
        print(f"  {b['prompt']!r}\n    before ({bs:+.2f}): {b['response'][:120]!r}\n"
              f"    after  ({as_:+.2f}): {a['response'][:120]!r}")
    print(f"\nplot: {os.path.join(workdir, 'reward_kl.png')}")
    return {"first": results[0], "last": results[-1]}
