"""benchmarks/gpu_real_weights.py --dry-run: the GPU script runs end to end on a tiny model on the CPU.

The script is meant for a lent GPU, where it runs once; this makes sure every step of it still runs
(conversion, eager / compiled / graph entries, fidelity, the JSON files) before it gets there. No
timing is asserted: on the CPU, with a tiny model, the figures mean nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_script_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "WORK": str(tmp_path / "work"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_real_weights.py"), "--dry-run"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["environment"]["dry_run"] is True
    assert summary["convert"]["order"] == 8 and summary["convert"]["release_bytes"] > summary["convert"]["source_bytes"]
    for dtype in ("bfloat16", "float16"):
        bench = json.loads((out / f"bench_{dtype}.json").read_text())
        assert [entry["batch"] for entry in bench["entries"]] == [1, 16]
        for entry in bench["entries"]:
            assert entry["predicted_decode_slowdown"] > 1 and entry["predicted_prefill_slowdown"] > 1
            for mode in ("eager", "compiled"):
                assert "error" not in entry[mode], entry[mode]
                assert entry[mode]["decode_ms"]["release"] > 0 and entry[mode]["prefill_slowdown"] > 0
            assert "CUDA" in entry["graph"]["skipped"]
        fidelity = json.loads((out / f"eval_{dtype}.json").read_text())
        assert "error" not in fidelity, fidelity
        assert 0.0 <= fidelity["top1_agreement"] <= 1.0 and fidelity["kl_mean"] >= 0.0
        assert fidelity["device"] == "cpu" and fidelity["dtype"] == dtype
    assert "total" in summary["steps"]
