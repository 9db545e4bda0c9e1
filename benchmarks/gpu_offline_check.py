"""GPU check that needs nothing but the machine's own torch + transformers (no network, no pip).

The lent GPU machines reach no package registry and receive at most 64 MiB of files, so the demo
checkpoint (a 98 MB GGUF) cannot travel. This builds a checkpoint with SmolLM2-135M-Instruct's exact
config (benchmarks/smollm2_135m_config.json) and random weights — identical shapes and bytes, hence
identical timings, but no fidelity figure — converts it (order 8, coverage 1.0) and measures the decode
and prefill slowdown in bfloat16 and float16 at batch 1 and 16 with `packager.stages.bench.bench`, then runs
benchmarks/gpu_runtime_check.py (fast path vs float64 series, CUDA graph capture, torch.compile).
Writes JSON files under $OUT.

    OUT=/tmp/out python benchmarks/gpu_offline_check.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    out = Path(os.environ.get("OUT", "gpu-out"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("WORK", "/tmp/unswift-gpu"))
    work.mkdir(parents=True, exist_ok=True)
    steps: dict[str, float] = {}
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    print(json.dumps(env), flush=True)
    (out / "environment.json").write_text(json.dumps(env))

    start = time.perf_counter()
    config = transformers.AutoConfig.for_model(**{
        k: v for k, v in json.loads((ROOT / "benchmarks" / "smollm2_135m_config.json").read_text()).items()
        if k not in ("architectures", "transformers_version", "dtype")})
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    source = work / "smollm2-shaped"
    model.save_pretrained(source)
    steps["build checkpoint"] = time.perf_counter() - start

    from packager import api
    from packager.stages.bench import bench
    from packager.stages.options import ConvertOptions

    start = time.perf_counter()
    stats = api.calibrate(source, tokens=1024)
    steps["calibrate 1024 tokens (cpu)"] = time.perf_counter() - start
    start = time.perf_counter()
    release = work / "release"
    api.convert(source, release, stats=stats, options=ConvertOptions(order=8, coverage=1.0), overwrite=True)
    steps["convert"] = time.perf_counter() - start
    results = {}
    for dtype in ("bfloat16", "float16"):
        start = time.perf_counter()
        report = bench(release, source, device="cuda", dtype=dtype, batches=(1, 16))
        results[dtype] = report.to_json()
        steps[f"bench {dtype}"] = time.perf_counter() - start
        print(json.dumps({dtype: results[dtype]}), flush=True)
    (out / "bench.json").write_text(json.dumps(results, indent=1))
    start = time.perf_counter()
    runtime = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_runtime_check.py"), "--compile"],
                             capture_output=True, text=True, timeout=240, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    (out / "runtime.json").write_text(runtime.stdout or json.dumps({"error": runtime.stderr[-2000:]}))
    print(runtime.stdout[-4000:] or runtime.stderr[-2000:], flush=True)
    steps["runtime check"] = time.perf_counter() - start
    (out / "steps.json").write_text(json.dumps(steps, indent=1))
    print(json.dumps(steps), flush=True)


if __name__ == "__main__":
    main()
