"""Weak-to-strong training from an Aligner's corrections (Ji et al., 2024, Table 4's layout).

The job "aligner_w2s" (`run`, configs/aligner_w2s.py):

  1. labels: the upstream model (`config.model`) answers the training questions (greedy), and
     the Aligner (`config.aligner_path`) corrects each answer a into a' -> labels.jsonl.
  2. three ways to train the upstream model on those labels, each a runner of this library
     with its own full config: `config.sft` (SFT on (q, a'), `train.run`), `config.dpo` (DPO
     with a' preferred to a), and `config.rlhf` (a reward model `config.rm` trained on a'
     preferred to a, then the online RL loop `alignjax.rl.loop` on the training questions with
     that reward model). A correction identical to its answer carries no preference and is
     left out of the pairs.
  3. evaluation: the upstream model and the three trained models answer every question set of
     `config.eval_sets` (greedy); each trained model's answers are judged against the upstream
     model's by each reward model of `config.judge.reward_models` (`aligner.judge`: the
     paper's improvement percentage, wins minus losses over all comparisons, with a bootstrap
     interval, and the length controls) -> w2s.json, and a table in Table 4's layout.

Every stage is skipped when its output exists, and the runners resume, so a killed job picks up
where it stopped.
"""

from __future__ import annotations

import copy
import json
import os

from tqdm.auto import tqdm

from alignjax import aligner, models
from alignjax import data as data_lib
from alignjax import train as train_lib
from alignjax.data.formats import Fields
from alignjax.data.records import user_prompt
from alignjax.rl import loop as rl_loop
from alignjax.rl.generation import read_jsonl, write_jsonl

METHODS = ("sft", "rlhf", "dpo")


def _path(p: str) -> str:
    return os.path.join(data_lib.shared_data_dir(), p[len("shared:"):]) if p.startswith(
        "shared:") else p


def read_questions(spec, tokenizer, max_prompt_tokens: int) -> list[str]:
    """The questions of `spec` (path, field, limit) whose single-turn chat prompt fits in
    `max_prompt_tokens` tokens, in file order, the first `limit` of them (0 = all)."""
    path = _path(spec.path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{spec.path!r}: no such file")
    renderer = data_lib.ChatRenderer(tokenizer)
    out = []
    for location, row in data_lib.read_rows(path):
        q = Fields(row, location, {"question": spec.field}).get("question")
        ids = tokenizer(renderer.prompt(user_prompt(q)), add_special_tokens=False).input_ids
        if len(ids) <= max_prompt_tokens:
            out.append(q)
        if spec.limit and len(out) == spec.limit:
            break
    if not out:
        raise ValueError(f"{spec.path}: no question fits in {max_prompt_tokens} prompt tokens")
    return out


def _answers(config, model_path: str, questions: list[str], mesh, desc: str) -> list[str]:
    ts = aligner._text_sampler(config, {**config.model.to_dict(), "path": model_path}, mesh,
                               seed=config.seed)
    renderer = data_lib.ChatRenderer(ts.tokenizer)
    rows = ts([renderer.prompt(user_prompt(q)) for q in questions], desc=desc)
    return [r["text"] for r in rows]


def labels(config, workdir: str, questions: list[str], mesh) -> list[dict]:
    """Stage 1 (see the module docstring) -> workdir/labels.jsonl."""
    path = os.path.join(workdir, "labels.jsonl")
    if not os.path.exists(path):
        answers = _answers(config, config.model.path, questions, mesh, "upstream")
        corrector = aligner.ModelCorrector(
            aligner._text_sampler(config, {**config.model.to_dict(),
                                           "path": config.aligner_path}, mesh),
            template=config.data.template)
        write_jsonl(path, aligner.stack(corrector, questions, answers,
                                        batch_size=config.aligner.sample_batch, desc="correct"))
    return read_jsonl(path)


def _train(base, workdir: str, name: str, model_path: str, train_file: str, fmt: str) -> str:
    c = copy.deepcopy(base)
    with c.unlocked():
        c.model.path, c.export = model_path, True
        c.data.train, c.data.format, c.data.eval = train_file, fmt, ""
    out = os.path.join(workdir, name)
    if not os.path.isdir(os.path.join(out, "export")):  # written whole, at the end
        train_lib.run(c, out)
    return os.path.join(out, "export")


def train_all(config, workdir: str, rows: list[dict]) -> dict[str, str]:
    """Stage 2 -> {method: export directory}."""
    data_dir = os.path.join(workdir, "data")
    os.makedirs(data_dir, exist_ok=True)
    sft_file = os.path.join(data_dir, "sft.jsonl")
    pairs_file = os.path.join(data_dir, "pairs.jsonl")
    prompts_file = os.path.join(data_dir, "prompts.jsonl")
    write_jsonl(sft_file, [{"prompt": r["question"], "response": r["correction"]} for r in rows])
    pairs = [{"prompt": r["question"], "chosen": r["correction"], "rejected": r["answer"]}
             for r in rows if not aligner.is_copy(r["answer"], r["correction"])]
    if not pairs:
        raise ValueError("aligner_w2s: every correction is a copy of its answer: no pairs")
    write_jsonl(pairs_file, pairs)
    write_jsonl(prompts_file, [{"prompt": r["question"]} for r in rows])
    up = config.model.path
    out = {"sft": _train(config.sft, workdir, "sft", up, sft_file, "sft"),
           "dpo": _train(config.dpo, workdir, "dpo", up, pairs_file, "preference")}
    rm_path = _train(config.rm, workdir, "rm", up, pairs_file, "preference")
    c = copy.deepcopy(config.rlhf)
    with c.unlocked():
        c.model.path, c.export = up, True
        c.reward, c.prompts = f"model:{rm_path}", f"file:{prompts_file}"
    rl_dir = os.path.join(workdir, "rlhf")
    if not os.path.isdir(os.path.join(rl_dir, "export")):
        rl_loop.run(c, rl_dir)
    out["rlhf"] = os.path.join(rl_dir, "export")
    return {m: out[m] for m in METHODS}


def evaluate(config, workdir: str, exports: dict[str, str], eval_sets: dict[str, list[str]],
             mesh) -> dict:
    """Stage 3 -> {set: {method: {judge: aligner.judge result}}}."""
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    answers = {}
    for set_name, questions in eval_sets.items():
        for name, path in {"upstream": config.model.path, **exports}.items():
            file = os.path.join(out_dir, f"{set_name}_{name}.jsonl")
            if not os.path.exists(file):
                texts = _answers(config, path, questions, mesh, f"{set_name}/{name}")
                write_jsonl(file, [{"question": q, "answer": a}
                                   for q, a in zip(questions, texts)])
            answers[set_name, name] = [r["answer"] for r in read_jsonl(file)]
    results = {s: {m: {} for m in METHODS} for s in eval_sets}
    for judge_name, rm_path in config.judge.reward_models.items():
        rm_model, _, rm_tok = models.load({**config.model.to_dict(), "path": rm_path}, mesh,
                                          head="scalar")
        score = aligner.reward_model_scores(rm_model, rm_tok, mesh=mesh,
                                            max_length=config.judge.max_length,
                                            batch_size=config.aligner.sample_batch)
        for set_name, questions in eval_sets.items():
            for m in METHODS:
                results[set_name][m][judge_name] = aligner.judge(
                    score, questions, answers[set_name, "upstream"], answers[set_name, m],
                    tokenizer=rm_tok, seed=config.seed)
        del rm_model
    return results


def table(results: dict) -> str:
    """Table 4's layout: a row per method, for each question set the improvement (%) judged
    by each reward model, with its 95% bootstrap interval."""
    sets = list(results)
    judges = list(next(iter(results[sets[0]].values())))
    head = "| method | " + " | ".join(f"{s}: {j}" for s in sets for j in judges) + " |"
    lines = [head, "|---|" + "---|" * (len(sets) * len(judges))]
    for m in METHODS:
        cells = []
        for s in sets:
            for j in judges:
                r = results[s][m][j]
                cells.append(f"{r['improvement_pct']:+.1f} ({r['improvement_pct_ci95_low']:+.1f}"
                             f" to {r['improvement_pct_ci95_high']:+.1f})")
        lines.append(f"| {m.upper() if m != 'rlhf' else 'RLHF'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(config, workdir: str) -> dict:
    """The job (see the module docstring); returns {"labels": counts, "results": ...}."""
    if not all(config.judge.reward_models.values()):
        raise ValueError(f"config.judge.reward_models={config.judge.reward_models.to_dict()}: "
                         "every judge needs a reward model directory")
    os.makedirs(workdir, exist_ok=True)
    mesh = aligner._mesh(config)
    tok = models.load_tokenizer(models.resolve_path(config.model.path))
    limit = max(config.rlhf.prompt_buckets)  # the RL loop's prompts must fit its buckets
    train_q = read_questions(config.train_questions, tok, limit)
    eval_sets = {name: read_questions(spec, tok, max(config.aligner.prompt_buckets))
                 for name, spec in config.eval_sets.items()}
    rows = labels(config, workdir, train_q, mesh)
    copies = sum(aligner.is_copy(r["answer"], r["correction"]) for r in rows)
    exports = train_all(config, workdir, rows)
    results = evaluate(config, workdir, exports, eval_sets, mesh)
    summary = {"labels": {"questions": len(rows), "copies": copies, "pairs": len(rows) - copies},
               "eval_questions": {k: len(v) for k, v in eval_sets.items()}, "results": results}
    with open(os.path.join(workdir, "w2s.json"), "w") as f:
        json.dump(summary, f, indent=2)
    tqdm.write(table(results))
    return summary

