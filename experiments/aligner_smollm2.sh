#!/usr/bin/env bash
# The Aligner measured end to end on 2 CPU cores (experiments/RESULTS.md, "Aligner"):
# the copy warm-up and correction training from SmolLM2-135M-Instruct, the two small HH-RLHF
# reward-model judges, then stacking on the held-out questions: GPT-4 Turbo's answers from the
# file (those of the 100 that fit the decoding budget), and SmolLM2-135M-Instruct's own greedy
# answers to the first 32. Each step is skipped when its
# output exists, so a killed run resumes.
#   bash experiments/aligner_smollm2.sh [RUNS_DIR]   (default runs/)
set -euo pipefail
runs=${1:-runs}
py=${PYTHON:-.venv/bin/python}
main() { "$py" -m alignjax.main "$@"; }
[ -f "$runs/aligner_warmup/copy_rate.json" ] && grep -q '"after"' "$runs/aligner_warmup/copy_rate.json" ||
  main --config configs/aligner_warmup.py --workdir "$runs/aligner_warmup"
for judge in helpful harmless; do
  [ -d "$runs/rm_$judge/export" ] ||
    main --config "configs/rm.py:${judge}_small" --workdir "$runs/rm_$judge"
done
judges=(--config.judge.reward_models.helpful="$runs/rm_helpful/export"
        --config.judge.reward_models.harmless="$runs/rm_harmless/export")
held_out=(--config.answers.path="$runs/aligner_warmup/data/eval.jsonl"
          --config.answers.question_field=question --config.answers.answer_field=answer
          --config.answers.limit=0)
aligner_model=--config.model.path="$runs/aligner_warmup/train/export"
[ -f "$runs/stack_gpt4/judge.json" ] ||
  main --config configs/aligner_stack.py --workdir "$runs/stack_gpt4" "$aligner_model" \
    "${held_out[@]}" "${judges[@]}"
[ -f "$runs/stack_smollm2/judge.json" ] ||
  main --config configs/aligner_stack.py --workdir "$runs/stack_smollm2" "$aligner_model" \
    "${held_out[@]}" "${judges[@]}" --config.upstream.path=smollm2-135m-instruct \
    --config.answers.limit=32
