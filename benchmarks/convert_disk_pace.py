"""The conversion step against the disk's own pace, measured in the same run.

Builds (once) the synthetic checkpoint of `synthetic_checkpoint.py` (4.4 GB fp32) and its calibration
(as `convert_scaling.py` does), then, per round:
  1. measures the disk: writes a file of the release's size (from the bytes model, `ReleaseSizer`) in
     16 MiB blocks into the folder the release will be written to, fsync included, and deletes it;
  2. runs `unswift convert --stats` (the conversion step: fits, transform, writing) in a child process,
     then `sync`, timed together, with the child's peak RSS and its phases (from its progress lines);
and prints one JSON object: the write bandwidth, the conversion's seconds, and

    ratio = convert seconds (with sync) / (release bytes / write bandwidth)

i.e. how far the conversion is from writing its release at the disk's pace (1.0: exactly; the issue's
target is at most 1.25), and `ratio_direct`, the same against an O_DIRECT write (the disk without the page
cache, which on the Firecracker VM is the faster path: the buffered yardstick is the page cache's pace),
plus peak RSS against the bound of docs/BENCHMARKS.md (largest shard + one
decoder layer + 1 GiB). Needs free disk for the checkpoint (4.4 GB) plus one release (11.8 GB at
order 8, coverage 1.0) at a time; everything but the checkpoint and its statistics is deleted
afterwards (`--clean` deletes those too).

    python benchmarks/convert_disk_pace.py --work /tmp/pace [--rounds 2] [--order 8] [--coverage 1.0] [--clean]
        [--intra-op-fits]

`--intra-op-fits` runs the fits as before this round (channel blocks one after another, each kernel on
torch's intra-op threads) for a side-by-side comparison; the release is the same either way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from convert_scaling import _numel, _shapes, conversion_parser, run, synthetic_checkpoint  # noqa: E402

BLOCK = 16 * 1024 * 1024
#: The child's peak RSS, printed as the last line of its stdout (as `convert_scaling.run` does).
RSS = ("import resource, subprocess, sys, json; rc = subprocess.call(sys.argv[1:]); "
       "print(json.dumps({'rc': rc, 'peak_rss_bytes': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))")


def timed_convert(args: list[str], env: dict) -> dict:
    """Run `unswift convert` (progress lines on stderr) and time its phases from those lines.

    start-up: until the first line; fits: until the first "MLP 1/" line (everything before the first
    MLP tensor: the fits, the layout, the copied tensors); streaming: from there to the end.
    """
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", RSS, *args], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    marks: dict[str, float] = {}
    lines = []
    for line in child.stderr:
        now = time.perf_counter() - start
        lines.append(line)
        marks.setdefault("first_line", now)
        if "MLP 1/" in line:
            marks.setdefault("first_mlp", now)
    stdout = child.stdout.read()
    child.wait()
    seconds = time.perf_counter() - start
    result = json.loads(stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"convert exited {result['rc']}:\n{''.join(lines[-40:])}")
    first, mlp = marks.get("first_line", 0.0), marks.get("first_mlp", seconds)
    return {"seconds": seconds, "peak_rss_bytes": result["peak_rss_bytes"],
            "phases": {"start_up": first, "fits_layout_copied": mlp - first, "streaming": seconds - mlp}}


def disk_write_bandwidth(folder: Path, size: int) -> dict:
    """Bytes per second of a synced write of `size` bytes into `folder` (file deleted afterwards)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "disk-pace.bin"
    block = os.urandom(BLOCK)  # incompressible, like weights
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        written = 0
        while written < size:
            written += os.write(fd, block[: min(BLOCK, size - written)])
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - start
    path.unlink()
    subprocess.run(["sync"], check=True)
    return {"bytes": written, "seconds": seconds, "bytes_per_second": written / seconds}


def disk_direct_bandwidth(folder: Path, size: int) -> dict | None:
    """`disk_write_bandwidth` with O_DIRECT (no page cache): what the disk itself takes, for comparison.

    On the Firecracker VM the page cache, not the disk, limits buffered writes (the kernel time per GB
    written is several times the disk's time); None where the file system refuses O_DIRECT (tmpfs).
    """
    import mmap

    path = folder / "disk-pace-direct.bin"
    block = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
    block.write(os.urandom(BLOCK))
    size -= size % BLOCK
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    except OSError:
        return None
    start = time.perf_counter()
    try:
        written = 0
        while written < size:
            written += os.write(fd, block)
        os.fsync(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    return {"bytes": written, "seconds": seconds, "bytes_per_second": written / seconds}


def predicted_release_bytes(checkpoint: Path, order: int, coverage: float) -> int:
    from packager.formats.checkpoint import open_checkpoint
    from packager.maths.sizing import ReleaseSizer, weight_bytes

    sizer = ReleaseSizer(open_checkpoint(checkpoint), dtype="float32")
    return weight_bytes(sizer.tensors(order, sizer.uniform(coverage)))


def main() -> None:
    parser = conversion_parser(__doc__, "/tmp/unswift-pace")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--clean", action="store_true", help="delete the checkpoint and statistics at the end")
    parser.add_argument("--intra-op-fits", action="store_true", help="the fits as before (see above)")
    args = parser.parse_args()
    work = args.work
    checkpoint = synthetic_checkpoint(work)
    env = dict(os.environ)
    unswift = [sys.executable, "-c", "from packager.cli import main; main()"]
    before = [sys.executable, "-c", "import packager.maths.series.fit as f; "
              "f.map_blocks = lambda function, starts: [function(s) for s in starts]; "
              "from packager.cli import main; main()"]
    stats = work / "stats.safetensors"
    if not stats.is_file():
        text = work / "calibration.txt"
        repo = HERE.parent
        text.write_text("\n\n".join(p.read_text() for p in sorted([*repo.glob("docs/*.md"), repo / "README.md"])
                                    if p.is_file()))
        run([*unswift, "calibrate", str(checkpoint), "--out", str(stats), "--calibration", str(text),
             "--calibration-tokens", str(args.tokens), "--overwrite", "--quiet"], env)
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    largest = max((checkpoint / f).stat().st_size for f in files)
    layer_bytes = sum(4 * _numel(shape) for key, shape in _shapes(checkpoint, files).items()
                      if key.startswith("model.layers.0."))
    release_bytes = predicted_release_bytes(checkpoint, args.order, float(args.coverage))
    results: dict = {"source_bytes": sum((checkpoint / f).stat().st_size for f in files),
                     "predicted_release_bytes": release_bytes, "bound_bytes": largest + layer_bytes + 1024**3,
                     "order": args.order, "coverage": args.coverage, "cpu_count": os.cpu_count(),
                     "threads": env.get("OMP_NUM_THREADS", "default"), "intra_op_fits": args.intra_op_fits,
                     "rounds": []}
    out = work / "release"
    try:
        for _ in range(args.rounds):
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(["sync"], check=True)
            disk = disk_write_bandwidth(work, release_bytes)
            direct = disk_direct_bandwidth(work, release_bytes)
            time.sleep(5)
            start = time.perf_counter()
            command = before if args.intra_op_fits else unswift
            convert = timed_convert([*command, "convert", str(checkpoint), "--out", str(out), "--stats",
                                     str(stats), "--order", str(args.order), "--coverage", args.coverage,
                                     "--max-shard-size", args.max_shard_size, "--overwrite"], env)
            subprocess.run(["sync"], check=True)
            seconds = time.perf_counter() - start
            written = sum(f.stat().st_size for f in out.glob("*.safetensors"))
            at_disk_pace = written / disk["bytes_per_second"]
            round_ = {"disk": disk, "disk_direct": direct, "convert_seconds": convert["seconds"],
                      "convert_seconds_with_sync": seconds,
                      "phases": convert["phases"], "load_average": os.getloadavg(),
                      "release_bytes": written, "seconds_at_disk_pace": at_disk_pace,
                      "ratio": seconds / at_disk_pace,
                      "ratio_direct": None if direct is None else seconds / (written / direct["bytes_per_second"]),
                      "peak_rss_bytes": convert["peak_rss_bytes"],
                      "within_bound": convert["peak_rss_bytes"] < results["bound_bytes"]}
            results["rounds"].append(round_)
            print(json.dumps(round_), file=sys.stderr, flush=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        (work / "release.secret").unlink(missing_ok=True)
        if args.clean:
            shutil.rmtree(checkpoint, ignore_errors=True)
            stats.unlink(missing_ok=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
