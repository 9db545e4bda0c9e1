"""The demo's last words: its figures in one line each, then the path of everything it wrote.

Usage: python scripts/demo_summary.py --release DIR --checkpoint DIR --out DIR [--seconds S]
The figures are the model card's own "At a glance" lines (`packager.api.headlines`), read from the
release's unswift.json; the signature line comes from `unswift verify --json` (OUT/verify.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from packager import api


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=int, default=None, help="the demo's wall time so far")
    args = parser.parse_args()
    lines = api.headlines(args.release)
    verify = json.loads((args.out / "verify.json").read_text())
    signature = (f"verified: all {len(verify['files'])} files match model.sig, signed by key fingerprint "
                 f"{verify['key_fingerprint']}" if verify.get("verified") else "NOT verified")
    rows = [("Fidelity", lines["fidelity"] or "not measured"),
            ("Slowdown", lines["slowdown"] or "not measured"),
            ("Audit", lines["protection"] or "not audited"),
            ("Signature", signature)]
    print("\nunswift demo: done.\n")
    for label, text in rows:
        print(f"  {label:<10} {text}")
    secret = args.release.parent / f"{args.release.name}.secret"
    outputs = [
        (f"{args.release}/", "the release folder: model card README.md, record unswift.json, model.sig"),
        (f"{args.out / 'publisher.pem'}, {args.out / 'publisher.pem.pub'}",
         "the publisher key pair (keep the private key secret; publish the .pub)"),
        (str(secret), "the hardening secret (keep it to re-create the release; never publish it)"),
        (", ".join(str(args.out / name) for name in ("release.json", "eval.json", "verify.json")),
         "the JSON of release, eval and verify"),
        (str(args.checkpoint), "the source checkpoint, in the unswift cache (UNSWIFT_CACHE)"),
        (".venv/setup.log", "pip's output from the setup"),
    ]
    print("\nWhat it wrote:")
    for path, what in outputs:
        print(f"  {path}\n      {what}")
    print(f"\nRead the card: {args.release / 'README.md'}")
    budget = (json.loads((args.release / "unswift.json").read_text()).get("budget") or {}).get("name", "full")
    stages = json.loads((args.out / "release.json").read_text()).get("stage_seconds") or {}
    took = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in stages.items() if seconds >= 1)
    if args.seconds is not None:
        print(f"\nThe demo took {args.seconds // 60} min {args.seconds % 60} s on this machine, measured on the "
              f"{budget} budget ({took or 'every stage resumed'})."
              + (" `bash scripts/demo.sh --full` measures at full size." if budget == "quick" else ""))


if __name__ == "__main__":
    main()
