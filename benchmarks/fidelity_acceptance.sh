#!/usr/bin/env bash
# Fidelity acceptance runs on the demo model (issues 2 and 3), every figure from the real CLI.
#   bash benchmarks/fidelity_acceptance.sh STATS OUTDIR
# STATS: a calibration of the demo checkpoint (`unswift calibrate CKPT --out STATS`, 16,384 tokens).
# Writes OUTDIR/<name>.convert.json and OUTDIR/<name>.eval.json (8,192 held-out tokens each).
set -euo pipefail
stats=$1; out=$2
mkdir -p "$out"
ckpt=$(unswift demo-checkpoint --quiet)
run() {  # name, convert options...
  local name=$1; shift
  unswift convert "$ckpt" --out "$out/$name" --stats "$stats" --overwrite --quiet --json "$@" \
    > "$out/$name.convert.json"
  unswift eval "$out/$name" --reference "$ckpt" --eval-tokens 8192 --quiet --json > "$out/$name.eval.json" || true
}
run full --coverage 1.0 --order 8
run cov90 --coverage 0.9 --order 8
run cov70 --coverage 0.7 --order 8
unswift convert "$ckpt" --out "$out/bf16" --stats "$stats" --overwrite --quiet --json --coverage 1.0 --order 8 \
  --dtype bfloat16 > "$out/bf16.convert.json"
python benchmarks/bf16_agreement.py "$ckpt" "$out/full" "$out/bf16" > "$out/bf16_agreement.json"
unswift convert "$ckpt" --out "$out/auto" --stats "$stats" --overwrite --quiet --json > "$out/auto.convert.json"
