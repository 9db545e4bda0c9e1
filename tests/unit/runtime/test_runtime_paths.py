"""The runtime's fast path (`TaylorMLP`): same numbers as the plain series, compiler- and graph-friendly.

The plain path is the series written out in float64 from `packager.maths.series.bases.design` (the
definition the fits use): y = Σ_j Σ_n Θ_{j,n} B_n(t_j) u_j + Σ_k Θ_k act(g_k) u_k. Tolerances: 1e-5
relative in float32, 2e-2 in bfloat16 (features and Θ rounded to 8 bits of mantissa).
"""

from __future__ import annotations

import shutil
import types

import pytest
import torch
import torch.nn.functional as F

from packager.maths.series import bases
from packager.runtime.modeling_unswift import SeriesBasis, TaylorExperts, TaylorMLP, module_state

HIDDEN, INTERMEDIATE = 32, 48


def _mlp(*, order=6, expanded=40, groups=None, gated=True, basis="chebyshev", extrapolation="linear",
         out_bias=False, seed=0) -> TaylorMLP:
    layer = {"intermediate": INTERMEDIATE, "expanded": expanded}
    if groups:
        layer["groups"] = [{"channels": c, "order": n} for c, n in groups]
    spec = {"layers": [layer], "gated": gated, "order": order, "basis": basis, "extrapolation": extrapolation,
            "hidden_act": "silu", "out_bias": out_bias}
    mlp = TaylorMLP(types.SimpleNamespace(unswift=spec, hidden_size=HIDDEN), 0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in mlp.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        mlp.in_proj.weight.mul_(3.0)  # t reaches beyond ±1: the linear continuation is exercised
    return mlp.eval()


def _plain(mlp: TaylorMLP, x: torch.Tensor) -> torch.Tensor:
    """The series written out term by term in float64 (no fused feature build)."""
    z = F.linear(x.double(), mlp.in_proj.weight.double(), mlp.in_proj.bias.double())
    gate, up = z[..., : mlp.intermediate], z[..., mlp.intermediate :]
    theta = mlp.theta.weight.double()
    y = torch.zeros(*x.shape[:-1], theta.shape[0], dtype=torch.float64)
    column, channel = 0, 0
    for count, order in mlp.groups:
        for j in range(channel, channel + count):
            values = bases.design(gate[..., j], order, mlp.bases[0].basis, mlp.bases[0].extrapolation)
            for n in range(order + 1):
                weight = values[..., n] * (up[..., j] if mlp.gated else 1.0)
                y += weight.unsqueeze(-1) * theta[:, column]
                column += 1
        channel += count
    for k in range(mlp.expanded, mlp.intermediate):
        act = F.silu(gate[..., k]) * (up[..., k] if mlp.gated else 1.0)
        y += act.unsqueeze(-1) * theta[:, column]
        column += 1
    if mlp.theta.bias is not None:
        y += mlp.theta.bias.double()
    return y


@pytest.mark.parametrize("case", [
    {}, {"expanded": INTERMEDIATE}, {"expanded": 0}, {"groups": [(30, 5), (10, 12)], "order": 6},
    {"gated": False, "out_bias": True}, {"basis": "monomial", "extrapolation": "none", "order": 4},
    {"basis": "chebyshev", "extrapolation": "none"},
], ids=["partial", "full", "plain", "groups", "non-gated", "monomial", "no-extrapolation"])
def test_fast_path_matches_the_plain_series_in_float32(case):
    mlp = _mlp(**case)
    x = torch.randn(2, 5, HIDDEN, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fast = mlp(x).double()
    plain = _plain(mlp, x)
    assert ((fast - plain).abs().max() / plain.abs().max()) < 1e-5


def test_fast_path_in_bfloat16_stays_close_to_float32():
    mlp = _mlp()
    x = torch.randn(3, HIDDEN, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = mlp(x)
        half = mlp.to(torch.bfloat16)(x.bfloat16()).float()
    assert half.dtype == torch.float32 and ((half - full).norm() / full.norm()) < 2e-2


def test_series_basis_matches_the_fitting_basis_at_high_order():
    t = torch.linspace(-1.3, 1.3, 301, dtype=torch.float64)
    for order in (16, 64):
        runtime = SeriesBasis(order, "chebyshev", "linear")(t.float()).double()
        reference = bases.design(t, order, "chebyshev", "linear")
        inside = t.abs() <= 1
        assert (runtime[inside] - reference[inside]).abs().max() < 2e-5 * order
        assert ((runtime - reference).abs().max() / reference.abs().max()) < 1e-5


def test_forward_has_no_graph_break():
    mlp = _mlp(groups=[(30, 5), (10, 12)])
    explanation = torch._dynamo.explain(mlp)(torch.randn(1, 1, HIDDEN))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("c++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_torch_compile_fullgraph_matches_eager():
    mlp = _mlp()
    x = torch.randn(1, 1, HIDDEN)
    compiled = torch.compile(mlp, fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x), mlp(x), rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.requires_gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_capture_replays_without_host_sync():
    mlp = _mlp().cuda().to(torch.bfloat16)
    static_x = torch.randn(1, 1, HIDDEN, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        expected = mlp(static_x)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up on a side stream, as CUDA graph capture requires
                mlp(static_x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        torch.cuda.set_sync_debug_mode("error")  # any host synchronisation raises
        try:
            with torch.cuda.graph(graph):
                static_y = mlp(static_x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        graph.replay()
        torch.cuda.synchronize()
    assert torch.allclose(static_y.float(), expected.float(), rtol=1e-2, atol=1e-2)


def _experts(count=4, seed=0) -> TaylorExperts:
    """Experts of different shapes (as a release's are: coverage differs from expert to expert)."""
    return TaylorExperts(_mlp(expanded=expanded, seed=seed + index)
                         for index, expanded in enumerate((40, 48, 0, 20)[:count]))


def _routing(tokens=7, experts=4, k=2, seed=3):
    generator = torch.Generator().manual_seed(seed)
    index = torch.stack([torch.randperm(experts, generator=generator)[:k] for _ in range(tokens)])
    return index, torch.rand(tokens, k, generator=generator)


def test_experts_static_path_equals_the_routed_one():
    experts = _experts()
    x = torch.randn(7, HIDDEN, generator=torch.Generator().manual_seed(4))
    index, weights = _routing()
    with torch.no_grad():
        routed = experts(x, index, weights)
        static = experts._dense(x, index, weights)
    assert ((static - routed).abs().max() / routed.abs().max()) < 1e-5


def test_experts_are_no_module_list():
    # vLLM's Transformers backend swaps a ModuleList called `experts` for its fused MoE kernel.
    experts = _experts()
    assert not isinstance(experts, torch.nn.ModuleList)
    assert len(experts) == 4 and experts[1] is list(experts)[1]
    assert all(p.dim() == 2 for name, p in experts.named_parameters() if name.endswith("weight"))


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("c++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_experts_compile_fullgraph_matches_eager():
    experts = _experts()
    x = torch.randn(7, HIDDEN, generator=torch.Generator().manual_seed(5))
    index, weights = _routing()
    compiled = torch.compile(experts, fullgraph=True)
    with torch.no_grad():
        eager = experts(x, index, weights)
        assert ((compiled(x, index, weights) - eager).abs().max() / eager.abs().max()) < 1e-5
    torch._dynamo.reset()


def test_theta_is_a_linear_that_weight_only_quantisers_find():
    mlp = _mlp(out_bias=True)
    assert isinstance(mlp.theta, torch.nn.Linear) and mlp.theta.bias is not None
    linears = {name for name, module in mlp.named_modules() if isinstance(module, torch.nn.Linear)}
    assert linears == {"in_proj", "theta"}


def test_release_names_map_onto_the_parameters_once():
    names = {"model.layers.0.mlp.theta": 0, "model.layers.0.mlp.out_bias": 1, "model.layers.0.mlp.in_proj.weight": 2,
             "model.layers.1.mlp.experts.3.theta": 3, "model.layers.0.mlp.theta.weight": 4}
    assert module_state(names) == {
        "model.layers.0.mlp.theta.weight": 4, "model.layers.0.mlp.theta.bias": 1,
        "model.layers.0.mlp.in_proj.weight": 2, "model.layers.1.mlp.experts.3.theta.weight": 3}
