"""Runtime checks on a CUDA device: fast path vs the plain series, CUDA-graph capture, torch.compile.

Prints one JSON object: per dtype (bfloat16, float16, float32) the relative error of `TaylorMLP`
against the series written out in float64, whether a CUDA graph captured it with host
synchronisation forbidden, the replay error and the eager / graph / compiled time per call at the
demo model's MLP shape (hidden 576, intermediate 1536, order 8, full coverage), batch 1 and 16.

    python benchmarks/gpu_runtime_check.py [--order 8] [--compile]
"""

from __future__ import annotations

import argparse
import json
import time
import types

import torch
import torch.nn.functional as F

from packager.maths.series import bases
from packager.runtime.modeling_unswift import TaylorMLP


def make_mlp(hidden: int, intermediate: int, order: int, device: str, dtype: torch.dtype) -> TaylorMLP:
    spec = {"layers": [{"intermediate": intermediate, "expanded": intermediate}], "gated": True, "order": order,
            "basis": "chebyshev", "extrapolation": "linear", "hidden_act": "silu", "out_bias": False}
    mlp = TaylorMLP(types.SimpleNamespace(unswift=spec, hidden_size=hidden), 0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        mlp.in_proj.weight.copy_(torch.randn(mlp.in_proj.weight.shape, generator=generator) * 1.5 / hidden**0.5)
        mlp.in_proj.bias.zero_()
        mlp.theta.copy_(torch.randn(mlp.theta.shape, generator=generator) / (intermediate * (order + 1)) ** 0.5)
    return mlp.to(device=device, dtype=dtype).eval()


def plain(mlp: TaylorMLP, x: torch.Tensor) -> torch.Tensor:
    """Σ_j Σ_n Θ_{j,n} B_n(t_j) u_j in float64 on the CPU (one order group, full coverage)."""
    x = x.double().cpu()
    z = F.linear(x, mlp.in_proj.weight.double().cpu(), mlp.in_proj.bias.double().cpu())
    gate, up = z[..., : mlp.intermediate], z[..., mlp.intermediate :]
    values = bases.design(gate, mlp.order, "chebyshev", "linear") * up.unsqueeze(-1)
    return F.linear(values.flatten(-2), mlp.theta.double().cpu())


def timed(fn, repeats: int = 50) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e6


@torch.no_grad()
def check(dtype: torch.dtype, order: int, batch: int, use_compile: bool) -> dict:
    mlp = make_mlp(576, 1536, order, "cuda", dtype)
    x = torch.randn(batch, 1, 576, device="cuda", dtype=dtype)
    out: dict = {"dtype": str(dtype).removeprefix("torch."), "batch": batch, "order": order}
    reference = plain(mlp, x)
    eager = mlp(x)
    out["relative_error_vs_plain"] = float((eager.double().cpu() - reference).norm() / reference.norm())
    out["eager_us"] = timed(lambda: mlp(x))
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            mlp(x)
    torch.cuda.current_stream().wait_stream(stream)
    try:
        torch.cuda.set_sync_debug_mode("error")
        with torch.cuda.graph(graph):
            captured = mlp(x)
        out["cuda_graph_captured"] = True
    except RuntimeError as err:
        out["cuda_graph_captured"] = False
        out["cuda_graph_error"] = str(err)[:300]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    if out["cuda_graph_captured"]:
        graph.replay()
        torch.cuda.synchronize()
        out["graph_replay_max_abs_diff"] = float((captured - eager).abs().max())
        out["graph_us"] = timed(graph.replay)
    if use_compile:
        try:
            compiled = torch.compile(mlp, fullgraph=True)
            diff = float((compiled(x) - eager).abs().max())
            out.update({"compile_fullgraph": True, "compile_max_abs_diff": diff,
                        "compiled_us": timed(lambda: compiled(x))})
        except Exception as err:  # report, do not stop the other checks  # noqa: BLE001
            out.update({"compile_fullgraph": False, "compile_error": repr(err)[:300]})
    # The bytes the multiply reads per call and the bandwidth the graph reaches.
    read = (mlp.theta.numel() + mlp.in_proj.weight.numel()) * mlp.theta.element_size()
    out["weight_bytes"] = read
    best = out.get("graph_us") or out["eager_us"]
    out["achieved_GBps"] = read / (best * 1e-6) / 1e9
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--order", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="also torch.compile(fullgraph=True) (slower)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"ok": False, "error": "no CUDA device"}))
        return
    results = [check(dtype, args.order, batch, args.compile) for dtype in (torch.bfloat16, torch.float16,
                                                                          torch.float32) for batch in (1, 16)]
    print(json.dumps({"ok": True, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "checks": results}))


if __name__ == "__main__":
    main()
