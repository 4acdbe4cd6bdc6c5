"""Aligner (Ji et al., 2024) end to end: copy warm-up, stacking on upstream answers, the judge.

An Aligner mu(y_c | y_o, x) rewrites an upstream answer y_o to question x into a correction y_c
(trained by `objectives.aligner`, the loss `losses.aligner_loss`). A *corrector* is any
function `(questions, answers) -> corrections`; `ModelCorrector` is the one an Aligner model
gives, decoding (greedy by default) through `alignjax.sampler`.

Two jobs (`alignjax.main`):

  "aligner_train" (`run_train`, configs/aligner_warmup.py): the copy warm-up of the paper. The
    held-out triplets are split off once; then `config.aligner.copy_warmup_steps` steps train
    on the training questions and answers with a `config.aligner.copy_share` fraction of the
    corrections replaced by the answer itself, (x, y_o, y_o), and the rest as they are
    (workdir/warmup/); then `config.steps` steps train on (x, y_o, y_c) from there
    (workdir/train/). Each stage is the offline runner `train.run` (resumable) with its own
    optimiser and schedule. The copy rate (`copy_rate`: held-out corrections identical to
    their input answer, greedy decoding) is measured before, after the warm-up and at the end
    on the first `config.aligner.copy_eval_size` held-out triplets whose answer is shorter than
    `config.aligner.max_new_tokens` tokens (a longer one cannot be copied within the budget)
    -> workdir/copy_rate.json and workdir/corrections_<stage>.jsonl.
  "aligner_stack" (`run_stack`, configs/aligner_stack.py): correct the answers of an upstream
    model, read from a file or sampled from one of this library's models, -> workdir/
    stacked.jsonl (question, answer, correction), and optionally judge them by reward models
    (`config.judge.reward_models`, e.g. helpful and harmless; `judge`: win / tie / lose, the
    paper's improvement percentage with a bootstrap interval, the reward gain with the length
    change regressed out and on a length-matched subset, the length change)
    -> workdir/judge.json.

For notebooks: `correct(model, tokenizer, questions, answers)` and `stack(corrector, ...)`.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from alignjax import data as data_lib
from alignjax import models, sampler, sharding
from alignjax import train as train_lib
from alignjax.data.formats import Fields
from alignjax.data.records import user_prompt
from alignjax.evaluate import wilson_interval
from alignjax.rl.generation import read_jsonl, write_jsonl
from alignjax.rl.rollout import RewardModel

Corrector = Callable[[Sequence[str], Sequence[str]], list[str]]
ScoreFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]


# ----------------------------------------------------------------------------- decoding


class TextSampler:
    """Prompt texts -> response texts through `alignjax.sampler`, in fixed-size batches.

    A prompt longer than the largest prompt bucket keeps its last tokens (as the training
    truncation "keep_end" does) and is counted in `truncated_prompts`. The last batch is padded
    with copies of its last prompt, so one shape is compiled per bucket.
    """

    def __init__(self, graphdef: nnx.GraphDef, params, cfg, tokenizer, *, max_new_tokens: int,
                 prompt_buckets: Sequence[int], batch_size: int,
                 settings: sampler.SamplingParams = sampler.GREEDY,
                 mesh: jax.sharding.Mesh | None = None, seed: int = 0):
        self.params, self.tokenizer, self.settings = params, tokenizer, settings
        self.batch_size, self.seed = batch_size, seed
        stops = sorted({*sampler._as_list(cfg.eos_token_id),
                        *sampler._as_list(tokenizer.eos_token_id)})
        self.sampler = sampler.make_sampler(
            graphdef, cfg, max_new_tokens=max_new_tokens, prompt_buckets=tuple(prompt_buckets),
            stop_token_ids=stops, pad_token_id=tokenizer.pad_token_id, mesh=mesh)
        self.truncated_prompts = 0

    @classmethod
    def from_model(cls, model, tokenizer, **kwargs) -> TextSampler:
        graphdef, params = nnx.split(model)
        return cls(graphdef, params, model.cfg, tokenizer, **kwargs)

    def __call__(self, prompts: Sequence[str], *, desc: str = "sample") -> list[dict]:
        """One row per prompt: `text` (stop token and special tokens left out), `tokens` and
        `finish_reason` ("stop" or "length")."""
        longest = max(self.sampler.prompt_buckets)
        ids = []
        for p in prompts:
            toks = self.tokenizer(p, add_special_tokens=False).input_ids
            self.truncated_prompts += int(len(toks) > longest)
            ids.append(toks[-longest:])
        rows = []
        for start in tqdm(range(0, len(ids), self.batch_size), desc=desc, unit="batch",
                          leave=False):
            chunk = ids[start:start + self.batch_size]
            real = len(chunk)
            chunk = chunk + [chunk[-1]] * (self.batch_size - real)
            out = self.sampler(self.params, chunk,
                               jax.random.fold_in(jax.random.key(self.seed), start),
                               self.settings)
            host = jax.device_get(out)
            reasons = out.finish_reasons()
            for r in range(real):
                length = int(host.mask_BT[r].sum())
                toks = [int(t) for t in host.tokens_BT[r, :length]]
                if toks and toks[-1] in self.sampler.stop_token_ids:
                    toks = toks[:-1]
                rows.append({"text": self.tokenizer.decode(toks, skip_special_tokens=True),
                             "tokens": length, "finish_reason": reasons[r]})
        return rows


class ModelCorrector:
    """The corrector of an Aligner model: its correction prompt (`data.correction_prompt`,
    `template` "chat" or "aligner"), then decoding by a `TextSampler`."""

    def __init__(self, text_sampler: TextSampler, *, template: str = "chat",
                 instruction: str = data_lib.ALIGNER_INSTRUCTION):
        self.text_sampler, self.template, self.instruction = text_sampler, template, instruction

    def __call__(self, questions: Sequence[str], answers: Sequence[str]) -> list[str]:
        tok = self.text_sampler.tokenizer
        prompts = [data_lib.correction_prompt(tok, q, a, template=self.template,
                                              instruction=self.instruction)
                   for q, a in zip(questions, answers, strict=True)]
        return [r["text"] for r in self.text_sampler(prompts, desc="correct")]


def correct(model, tokenizer, questions: Sequence[str], answers: Sequence[str], *,
            template: str = "chat", max_new_tokens: int = 256, batch_size: int = 8,
            prompt_buckets: Sequence[int] = (128, 256, 512),
            settings: sampler.SamplingParams = sampler.GREEDY) -> list[str]:
    """The corrections an Aligner `model` writes of `answers` to `questions` (for notebooks).

    Args:
      model: a `Transformer` trained as an Aligner (or any chat model).
      tokenizer: its tokenizer.
      questions, answers: the questions and the upstream answers, in the same order.
      template: the correction prompt the model was trained on ("chat" or "aligner").
      max_new_tokens: the longest correction.
      batch_size: prompts per compiled call.
      prompt_buckets: prompt lengths compiled for (longer prompts keep their end).
      settings: decoding (default greedy).
    """
    ts = TextSampler.from_model(model, tokenizer, max_new_tokens=max_new_tokens,
                                prompt_buckets=prompt_buckets, batch_size=batch_size,
                                settings=settings)
    return ModelCorrector(ts, template=template)(questions, answers)


# ----------------------------------------------------------------------------- stacking


def stack(corrector: Corrector, questions: Sequence[str], answers: Sequence[str], *,
          batch_size: int = 8, desc: str = "stack") -> list[dict]:
    """Rows {question, answer, correction} of `corrector` applied to every answer, in chunks
    of `batch_size` with a progress bar.

    Raises:
      ValueError: questions and answers differ in number, or the corrector returns another
        number of corrections than it was given answers.
    """
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    rows = []
    for start in tqdm(range(0, len(answers), batch_size), desc=desc, unit="batch"):
        qs, ans = list(questions[start:start + batch_size]), list(answers[start:start + batch_size])
        out = list(corrector(qs, ans))
        if len(out) != len(ans):
            raise ValueError(f"the corrector returned {len(out)} corrections for {len(ans)} "
                             f"answers (rows {start} to {start + len(ans) - 1})")
        rows += [{"question": q, "answer": a, "correction": c} for q, a, c in zip(qs, ans, out)]
    return rows


def is_copy(answer: str, correction: str) -> bool:
    """True when the correction is the answer itself (leading and trailing spaces aside)."""
    return answer.strip() == correction.strip()


def copy_rate(answers: Sequence[str], corrections: Sequence[str]) -> dict[str, float]:
    """The fraction of corrections identical to their input answer, with its 95% Wilson
    interval."""
    if len(answers) != len(corrections) or not answers:
        raise ValueError(f"copy_rate: {len(answers)} answers, {len(corrections)} corrections")
    copies = sum(is_copy(a, c) for a, c in zip(answers, corrections))
    low, high = wilson_interval(copies, len(answers))
    return {"copy_rate": copies / len(answers), "copy_rate_ci95_low": max(low, 0.0),
            "copy_rate_ci95_high": min(high, 1.0), "copies": copies, "n": len(answers)}


# ----------------------------------------------------------------------------- judging


def reward_model_scores(model, tokenizer, *, mesh: jax.sharding.Mesh | None = None,
                        max_length: int = 512, batch_size: int = 8) -> ScoreFn:
    """`score(questions, responses)` of a Bradley-Terry reward model (objective "rm", a scalar
    head), read at the response's EOS as in training: the question is one user turn through
    the chat template; a pair longer than `max_length` keeps its end ("keep_end")."""
    rm = RewardModel(model, mesh)

    def score(questions: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        examples = [data_lib.SFTExample((*user_prompt(q),
                                         {"role": "assistant", "content": r}), f"pair {i}")
                    for i, (q, r) in enumerate(zip(questions, responses, strict=True))]
        td = data_lib.tokenize(examples, tokenizer, max_length=max_length)
        if len(td) != len(examples):
            raise ValueError(f"reward model: {len(examples) - len(td)} pairs could not be kept "
                             f"within max_length={max_length}")
        out = []
        for start in range(0, len(td), batch_size):
            rows = td.examples[start:start + batch_size]
            # lengths padded to a multiple of 64: a few compiled shapes, not one per batch
            length = min(-(-max(len(r["input_ids"]) for r in rows) // 64) * 64, max_length)
            rows = rows + [None] * (batch_size - len(rows))  # one compiled batch shape
            batch = data_lib.COLLATORS["sft"](rows, length, td.pad_id)
            out.append(rm(batch)[:len(td.examples[start:start + batch_size])])
        return np.concatenate(out)

    return score


def judge(score: ScoreFn, questions: Sequence[str], originals: Sequence[str],
          corrected: Sequence[str], *, tokenizer=None, resamples: int = 2000, seed: int = 0,
          tie_margin: float = 0.0) -> dict[str, float]:
    """Corrected against original answers, each pair scored by `score(questions, responses)`.

    A correction wins when its score exceeds the original's by more than `tie_margin`, loses
    when it falls below by more, and ties otherwise. The improvement is the paper's
    (wins - losses) / comparisons, in percent, with a 95% percentile bootstrap interval over
    the questions (`resamples` draws); the length change (characters, and tokens when a
    tokenizer is given) is the mean of corrected minus original, with the same bootstrap.
    """
    n = len(questions)
    if not n or not n == len(originals) == len(corrected):
        raise ValueError(f"judge: {n} questions, {len(originals)} originals, "
                         f"{len(corrected)} corrections")
    s_orig = np.asarray(score(questions, originals), np.float64)
    s_corr = np.asarray(score(questions, corrected), np.float64)
    diff = s_corr - s_orig
    outcome = np.where(diff > tie_margin, 1, np.where(diff < -tie_margin, -1, 0))
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))

    def interval(x: np.ndarray) -> tuple[float, float]:
        means = x[draws].mean(axis=1)
        return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))

    low, high = interval(outcome * 100.0)
    g_low, g_high = interval(diff)
    chars = np.array([len(c) - len(o) for o, c in zip(originals, corrected)], np.float64)
    c_low, c_high = interval(chars)
    out = {"n": n, "wins": int((outcome == 1).sum()), "ties": int((outcome == 0).sum()),
           "losses": int((outcome == -1).sum()), "improvement_pct": float(outcome.mean() * 100),
           "improvement_pct_ci95_low": low, "improvement_pct_ci95_high": high,
           "reward_original": float(s_orig.mean()), "reward_corrected": float(s_corr.mean()),
           "reward_gain": float(diff.mean()), "reward_gain_ci95_low": g_low,
           "reward_gain_ci95_high": g_high,
           "length_change_chars": float(chars.mean()), "length_change_chars_ci95_low": c_low,
           "length_change_chars_ci95_high": c_high,
           "length_original_chars": float(np.mean([len(o) for o in originals]))}
    length, original_length = chars, np.array([len(o) for o in originals], np.float64)
    if tokenizer is not None:
        count = lambda t: len(tokenizer(t, add_special_tokens=False).input_ids)  # noqa: E731
        original_length = np.array([count(o) for o in originals], np.float64)
        length = np.array([count(c) for c in corrected], np.float64) - original_length
        t_low, t_high = interval(length)
        out.update({"length_change_tokens": float(length.mean()),
                    "length_change_tokens_ci95_low": t_low,
                    "length_change_tokens_ci95_high": t_high})
    out.update(_length_controls(diff, outcome, length, original_length, draws, seed + 1))
    return out


def _length_controls(diff: np.ndarray, outcome: np.ndarray, length: np.ndarray,
                     original_length: np.ndarray, draws: np.ndarray, seed: int
                     ) -> dict[str, float]:
    """The judge's preference with the length change taken out, two ways.

    Regressed: the least-squares fit diff = a + b * length_change over the pairs; `a` is the
    reward gain of a correction that keeps the length ("length_adjusted_gain"), `b` the reward
    per unit of added length; intervals from the same bootstrap draws. Matched: the pairs whose
    length changes by at most 10% of the original's (at least 1 unit) and their improvement
    percentage, with a 95% percentile bootstrap interval over those pairs (`seed`)."""
    def fit(d: np.ndarray, x: np.ndarray) -> np.ndarray:  # [..., n] -> [..., 2] = (a, b)
        xm, dm = x.mean(-1, keepdims=True), d.mean(-1, keepdims=True)
        var = ((x - xm) ** 2).sum(-1)
        b = np.where(var > 0, ((x - xm) * (d - dm)).sum(-1) / np.where(var > 0, var, 1.0), 0.0)
        return np.stack([dm[..., 0] - b * xm[..., 0], b], -1)

    a, b = fit(diff, length)
    boot = fit(diff[draws], length[draws])
    matched = np.abs(length) <= np.maximum(0.1 * original_length, 1.0)
    out = {"length_adjusted_gain": float(a), "length_slope": float(b),
           "length_adjusted_gain_ci95_low": float(np.percentile(boot[:, 0], 2.5)),
           "length_adjusted_gain_ci95_high": float(np.percentile(boot[:, 0], 97.5)),
           "length_matched_n": int(matched.sum())}
    if matched.any():
        m = outcome[matched] * 100.0
        means = m[np.random.default_rng(seed).integers(0, len(m), (len(draws), len(m)))].mean(1)
        out.update({"length_matched_wins": int((m > 0).sum()),
                    "length_matched_ties": int((m == 0).sum()),
                    "length_matched_losses": int((m < 0).sum()),
                    "length_matched_improvement_pct": float(m.mean()),
                    "length_matched_improvement_pct_ci95_low": float(np.percentile(means, 2.5)),
                    "length_matched_improvement_pct_ci95_high": float(np.percentile(means, 97.5))})
    return out


def judge_table(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table of `judge` results, one row per judge name."""
    def ci(r, key, fmt):
        return (f"{r[key]:{fmt}} ({r[key + '_ci95_low']:{fmt}} to "
                f"{r[key + '_ci95_high']:{fmt}})")

    lines = ["| judge | n | win / tie / lose | improvement % (95% CI) | reward gain "
             "| length-adjusted gain | length-matched: n, improvement % | length change, "
             "chars | length change, tokens |", "|" + "---|" * 9]
    for name, r in results.items():
        matched = (f"{r['length_matched_n']}, {ci(r, 'length_matched_improvement_pct', '+.1f')}"
                   if r.get("length_matched_n") else "0")
        tokens = ci(r, "length_change_tokens", "+.1f") if "length_change_tokens" in r else "-"
        lines.append(f"| {name} | {r['n']} | {r['wins']} / {r['ties']} / {r['losses']} | "
                     f"{ci(r, 'improvement_pct', '+.1f')} | {ci(r, 'reward_gain', '+.3f')} | "
                     f"{ci(r, 'length_adjusted_gain', '+.3f')} | {matched} | "
                     f"{ci(r, 'length_change_chars', '+.0f')} | {tokens} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the jobs


def _mesh(config) -> jax.sharding.Mesh:
    return sharding.make_mesh(**config.mesh)


def _text_sampler(config, model_config, mesh, *, settings=sampler.GREEDY, seed: int = 0
                  ) -> TextSampler:
    model, cfg, tokenizer = models.load(model_config, mesh)
    graphdef, params = nnx.split(model)
    a = config.aligner
    return TextSampler(graphdef, params, cfg, tokenizer, max_new_tokens=a.max_new_tokens,
                       prompt_buckets=tuple(a.prompt_buckets), batch_size=a.sample_batch,
                       settings=settings, mesh=mesh, seed=seed)


def read_answers(path: str, question_field: str, answer_field: str, limit: int = 0
                 ) -> tuple[list[str], list[str]]:
    """(questions, answers) of a JSON / JSONL / Parquet file; errors name the file, line and
    field. `limit` > 0 keeps the first that many rows."""
    questions, answers = [], []
    names = {"question": question_field, "answer": answer_field}
    for location, row in data_lib.read_rows(path):
        f = Fields(row, location, names)
        questions.append(f.get("question"))
        answers.append(f.get("answer"))
        if limit and len(answers) == limit:
            break
    if not answers:
        raise ValueError(f"{path}: no rows")
    return questions, answers


def run_stack(config, workdir: str, corrector: Corrector | None = None) -> dict:
    """The "aligner_stack" job (see the module docstring); `corrector` replaces the model of
    `config.model` when given. Finished stages (upstream.jsonl, stacked.jsonl) are reused."""
    os.makedirs(workdir, exist_ok=True)
    path = config.answers.path
    if path.startswith("shared:"):
        path = os.path.join(data_lib.shared_data_dir(), path[len("shared:"):])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.answers.path: no such file {path!r}")
    questions, answers = read_answers(path, config.answers.question_field,
                                      config.answers.answer_field, config.answers.limit)
    read = len(answers)
    if config.answers.fit and not config.upstream.path:
        # only the answers a correction can copy within the decoding budget (as for the copy
        # rate): a longer one would be cut short and judged for it
        tok = models.load_tokenizer(models.resolve_path(config.model.path))
        keep = [i for i, a in enumerate(answers)
                if len(tok(a, add_special_tokens=False).input_ids) < config.aligner.max_new_tokens]
        if not keep:
            raise ValueError(f"{path}: no answer is shorter than config.aligner.max_new_tokens="
                             f"{config.aligner.max_new_tokens} tokens (config.answers.fit)")
        questions, answers = [questions[i] for i in keep], [answers[i] for i in keep]
    mesh = _mesh(config) if corrector is None or config.upstream.path or \
        any(config.judge.reward_models.values()) else None
    if config.upstream.path:  # answers sampled from an upstream model of this library
        up_path = os.path.join(workdir, "upstream.jsonl")
        if not os.path.exists(up_path):
            up = _text_sampler(config, {**config.model.to_dict(), "path": config.upstream.path},
                               mesh, settings=sampler.SamplingParams(
                                   temperature=config.upstream.temperature), seed=config.seed)
            renderer = data_lib.ChatRenderer(up.tokenizer)
            rows = up([renderer.prompt(user_prompt(q)) for q in questions], desc="upstream")
            write_jsonl(up_path, [{"question": q, "answer": r["text"], **r}
                                  for q, r in zip(questions, rows)])
        answers = [r["answer"] for r in read_jsonl(up_path)]
    out_path = os.path.join(workdir, "stacked.jsonl")
    if not os.path.exists(out_path):
        if corrector is None:
            corrector = ModelCorrector(_text_sampler(config, config.model, mesh),
                                       template=config.data.template)
        rows = stack(corrector, questions, answers, batch_size=config.aligner.sample_batch)
        write_jsonl(out_path, rows)
    rows = read_jsonl(out_path)
    summary = {"rows": len(rows), "rows_read": read, "stacked": out_path,
               **copy_rate([r["answer"] for r in rows], [r["correction"] for r in rows])}
    judges = {name: path for name, path in config.judge.reward_models.items() if path}
    if judges:
        results = {}
        for name, rm_path in judges.items():
            rm_model, _, rm_tok = models.load({**config.model.to_dict(), "path": rm_path}, mesh,
                                              head="scalar")
            score = reward_model_scores(rm_model, rm_tok, mesh=mesh,
                                        max_length=config.judge.max_length,
                                        batch_size=config.aligner.sample_batch)
            results[name] = judge(score, [r["question"] for r in rows],
                                  [r["answer"] for r in rows], [r["correction"] for r in rows],
                                  tokenizer=rm_tok, seed=config.seed)
        with open(os.path.join(workdir, "judge.json"), "w") as f:
            json.dump(results, f, indent=2)
        tqdm.write(judge_table(results))
        summary["judge"] = results
    return summary


def _write_triplets(path: str, examples: Sequence[data_lib.CorrectionExample]) -> str:
    write_jsonl(path, [{"question": e.question, "answer": e.answer, "correction": e.correction}
                       for e in examples])
    return path


def warmup_examples(examples: Sequence[data_lib.CorrectionExample], share: float, seed: int
                    ) -> list[data_lib.CorrectionExample]:
    """The warm-up triplets: a `share` fraction of the examples (chosen by `seed`) become the
    identity (x, y_o, y_o); the others keep their correction."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"config.aligner.copy_share={share!r}: expected a number in [0, 1]")
    n_copy = round(share * len(examples))
    chosen = set(np.random.default_rng(seed).permutation(len(examples))[:n_copy].tolist())
    return [data_lib.CorrectionExample(e.question, e.answer, e.answer, e.origin) if i in chosen
            else e for i, e in enumerate(examples)]


def run_train(config, workdir: str) -> dict:
    """The "aligner_train" job (see the module docstring); returns the copy rates and the
    final metrics of each stage."""
    a = config.aligner
    if config.objective != "aligner":
        raise ValueError(f"config.objective={config.objective!r}: the aligner_train job trains "
                         "'aligner'")
    if not isinstance(a.copy_warmup_steps, int) or a.copy_warmup_steps < 0:
        raise ValueError(f"config.aligner.copy_warmup_steps={a.copy_warmup_steps!r}: expected "
                         "an integer >= 0")
    os.makedirs(os.path.join(workdir, "data"), exist_ok=True)
    train_ex, eval_ex, _ = data_lib.split_examples(config, workdir)
    warm_ex = warmup_examples(train_ex, a.copy_share, config.seed)
    files = {name: _write_triplets(os.path.join(workdir, "data", f"{name}.jsonl"), ex)
             for name, ex in (("warmup", warm_ex), ("train", train_ex), ("eval", eval_ex))}
    # a copy of an answer longer than the decoding budget cannot be written: those are left out
    tok = models.load_tokenizer(models.resolve_path(config.model.path))
    fits = [e for e in eval_ex
            if len(tok(e.answer, add_special_tokens=False).input_ids) < a.max_new_tokens]
    probe = fits[:a.copy_eval_size]
    rates_path = os.path.join(workdir, "copy_rate.json")
    rates = {}
    if os.path.exists(rates_path):
        with open(rates_path) as f:
            rates = json.load(f)
    mesh = _mesh(config)

    def measure(name: str, model_path: str) -> None:
        if name in rates or not probe:
            return
        corrector = ModelCorrector(_text_sampler(config, {**config.model.to_dict(),
                                                          "path": model_path}, mesh),
                                   template=config.data.template)
        out = corrector([e.question for e in probe], [e.answer for e in probe])
        rates[name] = {**copy_rate([e.answer for e in probe], out),
                       "held_out_that_fit": len(fits), "held_out": len(eval_ex)}
        write_jsonl(os.path.join(workdir, f"corrections_{name}.jsonl"),
                    [{"question": e.question, "answer": e.answer, "correction": c}
                     for e, c in zip(probe, out)])
        with open(rates_path, "w") as f:
            json.dump(rates, f, indent=2)
        tqdm.write(f"copy rate ({name}): {rates[name]['copy_rate']:.1%} of {len(probe)}")

    def stage(name: str, train_file: str, steps: int, model_path: str) -> tuple[str, dict]:
        c = copy.deepcopy(config)
        with c.unlocked():
            c.job, c.steps, c.model.path, c.export = "train", steps, model_path, True
            c.data.train, c.data.eval, c.data.format = train_file, files["eval"], "aligner"
            c.data.train_size = 0
            c.eval_every = min(c.eval_every, steps) if c.eval_every else 0
        stage_dir = os.path.join(workdir, name)
        return os.path.join(stage_dir, "export"), train_lib.run(c, stage_dir)

    measure("before", config.model.path)
    path, results = config.model.path, {}
    if a.copy_warmup_steps:
        path, results["warmup"] = stage("warmup", files["warmup"], a.copy_warmup_steps, path)
        measure("after_warmup", path)
    path, results["train"] = stage("train", files["train"], config.steps, path)
    measure("after", path)
    return {"copy_rate": rates, **results}
