"""transformers' tp_plan="auto" splits a release over ranks and computes what one process computes.

Two CPU ranks over gloo (`torch.distributed.run`). The runtime's plan keeps the family's attention
entries and drops its MLP entries; the series is split (in_proj packed by channel, Θ by columns) where
every channel has the same number of columns, and replicated otherwise (order allocation). Before, a
mixture-of-experts release inherited `moe_tp_experts`, which all-reduced unsplit experts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from support.tiny import build_tiny

from packager import api
from packager.stages.options import ConvertOptions

pytest.importorskip("transformers.distributed.tensor_parallel")
pytest.importorskip("accelerate")  # transformers requires it for tp_plan

RANKS = r"""
import json, sys
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

path = sys.argv[1]
ids = torch.randint(0, 250, (2, 20), generator=torch.Generator().manual_seed(0))
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, tp_plan="auto").eval()
with torch.no_grad():
    logits = model(ids).logits
theta = model.model.layers[0].mlp
theta = (theta.experts[0] if hasattr(theta, "experts") else theta).theta.weight
local_columns = (theta.to_local() if hasattr(theta, "to_local") else theta).shape[1]
if dist.get_rank() == 0:
    single = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    with torch.no_grad():
        reference = single(ids).logits
    print("RESULT " + json.dumps({"max_diff": float((logits - reference).abs().max()),
                                  "scale": float(reference.abs().max()), "local_columns": local_columns,
                                  "columns": theta.shape[1],
                                  "series_styles": sorted({v for k, v in model.tp_plan.items() if ".mlp." in k})}))
dist.barrier()
dist.destroy_process_group()
"""

CASES = {"llama-uniform": ("llama", {"allocation": "uniform"}, 0),
         "llama-allocated": ("llama", {}, 8),
         "mixtral-uniform": ("mixtral", {"allocation": "uniform"}, 0)}


@pytest.mark.parametrize("case", list(CASES))
def test_tp_plan_auto_on_two_ranks_matches_one_process(case, tmp_path):
    family, options, wide = CASES[case]
    source = build_tiny(family, tmp_path / "src", wide_channels=wide)
    release = tmp_path / "release"
    api.convert(source, release, stats=api.calibrate(source, tokens=1024),
                options=ConvertOptions(order=6, coverage=1.0, **options))
    spec = json.loads((release / "config.json").read_text())["unswift"]
    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                           str(release)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["max_diff"] <= 1e-5 * max(result["scale"], 1.0), result
    if spec["allocation"]["kind"] == "uniform":
        assert result["series_styles"] == ["rowwise", "unswift_packed_colwise"], result
        assert result["local_columns"] * 2 == result["columns"], result
    else:  # channels of two orders: the series stays whole on each rank
        assert result["series_styles"] == [] and result["local_columns"] == result["columns"], result
