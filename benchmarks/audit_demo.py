"""Protection audit of the demo model (SmolLM2-135M-Instruct): the figures of docs/BENCHMARKS.md.

Converts the demo checkpoint into the release kinds the acceptance criteria name, with one fixed secret,
then runs `packager.stages.audit.audit` on each against the source and prints a markdown table (attack x
release kind: recovered fraction, relative error, seconds, rebuilt top-1). With `--fidelity` it also
measures each release's teacher-forced top-1 agreement and KL against the source on text sampled from
the source (the cost side of hardening).

    python benchmarks/audit_demo.py --out /tmp/audit-demo                       # everything
    python benchmarks/audit_demo.py --out /tmp/audit-demo --kinds paper,taylor --attacks coefficient_ratio
    python benchmarks/audit_demo.py --out /tmp/audit-demo --skip-convert --fidelity
    python benchmarks/audit_demo.py --out /tmp/audit-demo --kinds window --window 0.3 --fidelity

`--window W` adds the kind `window`: the default release with the experimental secret window of
`packager.maths.transform.Hardening` (off in unswift; this measures why).

Minutes on a 2-core CPU; every release kind is converted once and reused with `--skip-convert`.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from packager import api
from packager.formats.stats import Stats
from packager.maths.transform import Hardening
from packager.stages import options as options_module
from packager.stages.audit import ATTACK_NAMES, LearningBudget, audit
from packager.stages.options import ConvertOptions

DEMO = Path.home() / ".cache" / "unswift" / "demo" / "SmolLM2-135M-Instruct"
SECRET = "unswift-audit-demo-secret\n"
#: name -> (convert options, what it is)
KINDS = {
    "paper": (ConvertOptions(order=6, coverage=0.7, fit="taylor", hardening=False),
              "--fit taylor --no-hardening --order 6 --coverage 0.7 (the paper's release)"),
    "taylor": (ConvertOptions(order=6, coverage=0.7, fit="taylor"),
               "--fit taylor --order 6 --coverage 0.7 (hardening on)"),
    "nohard": (ConvertOptions(order=8, coverage=1.0, hardening=False),
               "--no-hardening --order 8 --coverage 1.0 (default fit)"),
    "default": (ConvertOptions(order=8, coverage=1.0), "--order 8 --coverage 1.0 (default fit, hardening on)"),
    "window": (ConvertOptions(order=8, coverage=1.0), "as default, plus the experimental window (--window)"),
}


def convert_all(checkpoint: Path, out: Path, stats: Stats, kinds: list[str], window: float) -> dict[str, float]:
    secret = out / "secret"
    secret.write_text(SECRET)
    seconds = {}
    scheme = ConvertOptions.hardening_scheme
    for name in kinds:
        start = time.perf_counter()
        if name == "window":  # ConvertOptions has no window option: swap the scheme for this one release
            options_module.ConvertOptions.hardening_scheme = property(lambda _self: Hardening(window=window))
        try:
            api.convert(checkpoint, out / name, stats=stats, options=KINDS[name][0], secret_file=secret,
                        overwrite=True)
        finally:
            options_module.ConvertOptions.hardening_scheme = scheme
        seconds[name] = time.perf_counter() - start
        print(f"converted {name} in {seconds[name]:.0f} s", flush=True)
    return seconds


class Fidelity:
    """Teacher-forced top-1 agreement and KL of releases against their source, on text sampled once."""

    def __init__(self, checkpoint: Path, tokens: int) -> None:
        from packager.formats.checkpoint import open_checkpoint
        from packager.stages.text import sample_text

        source = open_checkpoint(checkpoint)
        self.reference = source.load_model(torch.float32)
        self.text = sample_text(self.reference, source.load_tokenizer(), kind="eval", tokens=tokens, seq_len=256,
                                seed=1007)

    @torch.no_grad()
    def __call__(self, release: Path) -> dict:
        from packager.stages.evaluate import compare_logits, load_release

        agreement = compare_logits(self.reference, load_release(release, dtype=torch.float32), self.text.ids)
        return {"top1_agreement": agreement.top1_agreement, "kl_mean": agreement.kl_mean,
                "tokens": agreement.tokens, "text": self.text.source}


def table(results: dict[str, dict]) -> str:
    lines = ["| release | attack | recovered | up to scale | rel. error | seconds | rebuilt top-1 | release top-1 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for kind, report in results.items():
        for attack in report["attacks"]:
            lines.append(
                f"| {kind} | {attack['name']} | {_pct(attack['recovered_fraction'])} | "
                f"{_pct(attack.get('recovered_fraction_up_to_scale'))} | {_num(attack['relative_error'])} | "
                f"{attack['seconds']:.1f} | {_pct(attack['rebuilt_top1'])} | {_pct(report.get('release_top1'))} |")
    return "\n".join(lines)


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.2e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEMO)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stats", type=Path, default=None, help="Reuse a calibration (unswift calibrate).")
    parser.add_argument("--calibration-tokens", type=int, default=4096)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--attacks", default=",".join(ATTACK_NAMES))
    parser.add_argument("--learning-steps", type=int, default=300)
    parser.add_argument("--attacker-tokens", type=int, default=2048)
    parser.add_argument("--skip-convert", action="store_true")
    parser.add_argument("--fidelity", action="store_true", help="Also measure top-1/KL of each release.")
    parser.add_argument("--fidelity-tokens", type=int, default=1024)
    parser.add_argument("--window", type=float, default=0.3, help="Window of the `window` kind.")
    args = parser.parse_args()
    if not (args.checkpoint / "config.json").is_file():
        raise SystemExit(f"{args.checkpoint} is missing: create it with `unswift demo-checkpoint`")
    kinds = [k for k in args.kinds.split(",") if k]
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}", flush=True)
    timings: dict = {}
    if not args.skip_convert:
        stats_path = args.stats or args.out / "stats.safetensors"
        if not stats_path.is_file():
            start = time.perf_counter()
            api.calibrate(args.checkpoint, tokens=args.calibration_tokens, out=stats_path)
            timings["calibrate"] = time.perf_counter() - start
        timings["convert"] = convert_all(args.checkpoint, args.out, Stats.load(stats_path), kinds, args.window)
    budget = LearningBudget(steps=args.learning_steps, tokens=args.attacker_tokens)
    results = {}
    measure = Fidelity(args.checkpoint, args.fidelity_tokens) if args.fidelity else None
    for kind in kinds:
        start = time.perf_counter()
        report = audit(args.out / kind, reference=args.checkpoint, attacks=args.attacks.split(","),
                       learning=budget, progress=lambda message, kind=kind: print(f"  [{kind}] {message}", flush=True))
        results[kind] = report.to_json()
        results[kind]["audit_seconds"] = time.perf_counter() - start
        if measure is not None:
            results[kind]["fidelity"] = measure(args.out / kind)
        results[kind]["kind"] = KINDS[kind][1]
        payload = {"timings": timings, "results": results}
        (args.out / f"audit_results_{'_'.join(kinds)}.json").write_text(json.dumps(payload, indent=2))
        print(f"{kind}: protected_param_fraction {results[kind]['protected_param_fraction']:.4f}, "
              f"leaks {len(results[kind]['leaks'])}, audit {results[kind]['audit_seconds']:.0f} s"
              + (f", fidelity {results[kind]['fidelity']}" if args.fidelity else ""), flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
