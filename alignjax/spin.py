"""SPIN (Chen et al. 2024, "Self-Play Fine-Tuning"): DPO of SFT answers against the model's own.

A job (`config.job = "spin"`). Round r = 1 .. `config.rounds`, in workdir/round_r/:

  1. the opponent (round 1: `config.model.path`; round r: round r-1's trained model) answers the
     first `config.spin.prompts` prompts of the SFT data (`config.data.train` in
     `config.data.format`, read as `alignjax.sample_job` reads prompts; seed `config.seed + r`)
     -> opponent/samples.jsonl;
  2. each prompt's SFT answer is chosen and the opponent's answer rejected -> pairs.jsonl
     (preference format);
  3. DPO on the pairs with the offline runner (`alignjax.train.run`), starting from the opponent,
     which is also the reference: SPIN's loss is DPO's logistic loss of the log-ratios to the
     opponent -> train/ (its export/ is the next round's opponent);
  4. the round's summary (pairs, last training metrics) -> round.json.

A round whose round.json exists is not run again; in an unfinished round a written pairs.jsonl
is reused (the samples are written before it) and the runner resumes from its last checkpoint.
"""

from __future__ import annotations

import copy
import json
import os

import ml_collections
from tqdm.auto import tqdm

from alignjax import data as data_lib
from alignjax import objectives, sample_job, train
from alignjax.rl.generation import read_jsonl, write_jsonl


def sft_answers(examples: list) -> list[str]:
    """The answer to imitate of each example: an SFT conversation's last assistant turn, or a
    pair's chosen response (HH-RLHF's chosen side is the SFT data of configs/sft.py)."""
    out = []
    for ex in examples:
        if isinstance(ex, data_lib.SFTExample):
            out.append(ex.messages[-1]["content"])
        elif isinstance(ex, data_lib.PairExample):
            out.append(ex.chosen)
        else:
            raise TypeError(f"{ex.origin}: a {type(ex).__name__} has no answer to imitate "
                            "(config.data.format)")
    return out


def sample_config(config, model_path: str, seed: int) -> ml_collections.ConfigDict:
    """The sample job's config for the opponent at `model_path`: one answer per prompt."""
    s = config.spin
    return ml_collections.ConfigDict({
        "job": "sample", "seed": seed, "batch_size": s.sample_batch,
        "mesh": dict(config.mesh),
        "model": {"path": model_path, "dtype": config.model.dtype,
                  "param_dtype": config.model.param_dtype},
        "data": {"prompts": config.data.train, "format": config.data.format,
                 "limit": s.prompts, "truncation": "drop",
                 "on_malformed": config.data.on_malformed},
        "sample": {"max_new_tokens": s.max_new_tokens, "temperature": s.temperature,
                   "top_k": s.top_k, "top_p": s.top_p, "min_p": 0.0, "n": 1,
                   "prompt_buckets": tuple(s.prompt_buckets), "stop_token_ids": ()}})


def make_pairs(samples: list[dict], answers: list[str]) -> list[dict]:
    """(prompt, chosen = SFT answer, rejected = the opponent's answer), one per sample; a sample
    equal to its SFT answer gives no pair."""
    return [{"prompt": s["prompt"], "chosen": answers[s["example_id"]],
             "rejected": s["response"]}
            for s in samples if s["response"] != answers[s["example_id"]]]


def dpo_config(config, pairs_path: str, model_path: str) -> ml_collections.ConfigDict:
    """The runner's config for one round: DPO on `pairs_path` from (and against) `model_path`."""
    c = copy.deepcopy(config)
    with c.unlocked():
        c.job = "train"
        c.data.train = pairs_path
        c.data.format = "preference"
        c.data.eval = ""
        c.model.path = model_path
        c.export = True  # the next round's opponent
    return c


def _round(config, workdir: str, r: int, opponent: str, answers: list[str]) -> dict:
    rdir = os.path.join(workdir, f"round_{r}")
    os.makedirs(rdir, exist_ok=True)
    pairs_path = os.path.join(rdir, "pairs.jsonl")
    if not os.path.exists(pairs_path):
        sample_dir = os.path.join(rdir, "opponent")
        sample_job.run(sample_config(config, opponent, seed=config.seed + r), sample_dir)
        samples = read_jsonl(os.path.join(sample_dir, sample_job.OUTPUT))
        write_jsonl(pairs_path, make_pairs(samples, answers))
    pairs = read_jsonl(pairs_path)
    tqdm.write(f"round {r}: {len(pairs)} pairs (SFT answer chosen, {opponent} rejected)")
    last = train.run(dpo_config(config, pairs_path, opponent), os.path.join(rdir, "train"))
    summary = {"round": r, "opponent": opponent, "pairs": len(pairs),
               **{k: v for k, v in last.items() if isinstance(v, (int, float))}}
    tmp = os.path.join(rdir, "round.json.tmp")
    with open(tmp, "w") as f:  # whole or not at all: its presence marks the round done
        json.dump(summary, f, indent=2)
    os.replace(tmp, os.path.join(rdir, "round.json"))
    return summary


def run(config, workdir: str) -> dict:
    """Runs the unfinished rounds (module docstring); returns the summary of every round."""
    if config.objective not in ("dpo", "hinge", "ipo", "robust_dpo"):
        raise ValueError(f"config.objective={config.objective!r}: SPIN trains a loss of "
                         "pairs against the opponent (dpo, hinge, ipo, robust_dpo)")
    objectives.make(config.objective, config.loss.to_dict())  # bad loss keys fail now
    if config.rounds < 1 or config.spin.prompts < 1:
        raise ValueError(f"config.rounds={config.rounds}, config.spin.prompts="
                         f"{config.spin.prompts}: expected both >= 1")
    os.makedirs(workdir, exist_ok=True)
    examples, _ = data_lib.load_examples(data_lib.resolve_sources(config.data.train, "train"),
                                         config.data.format,
                                         on_malformed=config.data.on_malformed)
    answers = sft_answers(examples[:config.spin.prompts])
    rounds, opponent = [], config.model.path
    for r in range(1, config.rounds + 1):
        done = os.path.join(workdir, f"round_{r}", "round.json")
        if os.path.exists(done):
            with open(done) as f:
                summary = json.load(f)
        else:
            summary = _round(config, workdir, r, opponent, answers)
        rounds.append(summary)
        opponent = os.path.join(workdir, f"round_{r}", "train", "export")
    write_jsonl(os.path.join(workdir, "rounds.jsonl"), rounds)
    return {"rounds": rounds}
