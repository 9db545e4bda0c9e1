"""Conversion at scale: time and peak memory of calibrate and convert on a multi-GB synthetic checkpoint.

Builds (once) the checkpoint of `synthetic_checkpoint.py` (4.4 GB fp32 in shards of at most 1 GB), then
runs, each in its own process measured with resource.getrusage (peak RSS of that process):
  1. `unswift calibrate` from a text file (read one decoder layer at a time),
  2. `unswift convert --stats` (the conversion step alone: fits, transform, writing),
  3. `unswift convert --calibration` (the whole convert, calibration included),
and prints one JSON object: seconds, MB/s of source weights, peak RSS, and the bound peak RSS must stay
under (largest source shard + one decoder layer + 1 GiB).

    python benchmarks/convert_scaling.py --work /tmp/scaling [--order 8] [--coverage 1.0] [--tokens 1024]
        [--reuse-stats] [--skip-whole]

Threads: torch's default (every core) unless OMP_NUM_THREADS is set. `source_MBps` is source bytes over
the command's wall time (start-up included); `source_MBps_with_sync` adds the `sync` that flushes the
release from the page cache to disk.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(args: list[str], env: dict) -> dict:
    """Run a command in a child process; its wall time and peak RSS (ru_maxrss of the child alone)."""
    code = ("import resource, subprocess, sys, json, time; t = time.perf_counter(); "
            "rc = subprocess.call(sys.argv[1:]); "
            "print(json.dumps({'rc': rc, 'seconds': time.perf_counter() - t, "
            "'peak_rss_bytes': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))")
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{\"rc\"")]
    if not lines:
        raise SystemExit(f"{args[:3]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    result = json.loads(lines[-1])
    if result["rc"] != 0:
        raise SystemExit(f"{args[:3]} exited {result['rc']}:\n{done.stderr[-4000:]}")
    return result


def conversion_parser(doc: str, work: str) -> argparse.ArgumentParser:
    """The options every conversion benchmark on the synthetic checkpoint shares."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path(work))
    parser.add_argument("--order", type=int, default=8)
    parser.add_argument("--coverage", default="1.0")
    parser.add_argument("--tokens", type=int, default=1024, help="calibration tokens")
    parser.add_argument("--max-shard-size", default="1GB")
    return parser


def synthetic_checkpoint(work: Path) -> Path:
    """`work/synthetic`, built once by `synthetic_checkpoint.py` (in its own process: it frees its memory)."""
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / "synthetic"
    if not (checkpoint / "model.safetensors.index.json").is_file():
        subprocess.run([sys.executable, str(HERE / "synthetic_checkpoint.py"), str(checkpoint)], check=True)
    return checkpoint


def main() -> None:
    parser = conversion_parser(__doc__, "/tmp/unswift-scaling")
    parser.add_argument("--text", type=Path, default=None, help="calibration text (default: the repo's docs)")
    parser.add_argument("--skip-whole", action="store_true", help="skip run 3 (convert with calibration)")
    parser.add_argument("--reuse-stats", action="store_true", help="skip run 1 when its statistics exist")
    args = parser.parse_args()
    work = args.work
    checkpoint = synthetic_checkpoint(work)
    text = args.text or work / "calibration.txt"
    if not text.is_file():
        repo = HERE.parent
        text.write_text("\n\n".join(p.read_text() for p in sorted([*repo.glob("docs/*.md"), repo / "README.md"])
                                    if p.is_file()))
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    source_bytes = sum((checkpoint / f).stat().st_size for f in files)
    largest = max((checkpoint / f).stat().st_size for f in files)
    config = json.loads((checkpoint / "config.json").read_text())
    layer_bytes = sum(4 * _numel(shape) for key, shape in _shapes(checkpoint, files).items()
                      if key.startswith("model.layers.0."))
    env = dict(os.environ)  # OMP_NUM_THREADS as the caller set it (torch's default: every core)
    unswift = [sys.executable, "-c", "from packager.cli import main; main()"]
    stats = work / "stats.safetensors"
    results: dict = {"source_bytes": source_bytes, "largest_shard_bytes": largest, "layer_bytes": layer_bytes,
                     "bound_bytes": largest + layer_bytes + 1024**3, "layers": config["num_hidden_layers"],
                     "order": args.order, "coverage": args.coverage, "calibration_tokens": args.tokens,
                     "threads": env.get("OMP_NUM_THREADS", "default"), "cpu_count": os.cpu_count()}
    if args.reuse_stats and stats.is_file():
        results["calibrate"] = None
    else:
        results["calibrate"] = run([*unswift, "calibrate", str(checkpoint), "--out", str(stats), "--calibration",
                                    str(text), "--calibration-tokens", str(args.tokens), "--overwrite", "--quiet"],
                                   env)
    for name, extra in (("convert", ["--stats", str(stats)]),
                        ("convert_with_calibration", ["--calibration", str(text), "--calibration-tokens",
                                                      str(args.tokens)])):
        if name == "convert_with_calibration" and args.skip_whole:
            continue
        out = work / f"release-{name}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        results[name] = run([*unswift, "convert", str(checkpoint), "--out", str(out), *extra, "--order",
                             str(args.order), "--coverage", args.coverage, "--max-shard-size", args.max_shard_size,
                             "--overwrite", "--quiet"], env)
        results[name]["release_bytes"] = sum(f.stat().st_size for f in out.glob("*.safetensors"))
        results[name]["source_MBps"] = source_bytes / 1e6 / (time.perf_counter() - start)
        # convert returns with part of the release still in the page cache, as every writer does; the
        # figure with the disk flush included is the one a machine with little free memory would see.
        subprocess.run(["sync"], check=True)
        results[name]["seconds_with_sync"] = time.perf_counter() - start
        results[name]["source_MBps_with_sync"] = source_bytes / 1e6 / results[name]["seconds_with_sync"]
        shutil.rmtree(out, ignore_errors=True)
    for name in ("calibrate", "convert", "convert_with_calibration"):
        if results.get(name):
            results[name]["within_bound"] = results[name]["peak_rss_bytes"] < results["bound_bytes"]
    print(json.dumps(results))


def _shapes(folder: Path, files: list[str]) -> dict[str, list[int]]:
    import struct

    shapes = {}
    for name in files:
        with open(folder / name, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        shapes.update({k: v["shape"] for k, v in header.items() if k != "__metadata__"})
    return shapes


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
