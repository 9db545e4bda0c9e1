"""Standard weight-only quantisers find Θ: it is an nn.Linear, so torchao and optimum-quanto convert it.

Skipped where torchao / optimum-quanto are not installed (they are not unswift dependencies). What
quantisation does to a release's fidelity is measured on the demo model in docs/BENCHMARKS.md: int8 of
Θ costs far more than int8 of the source's down projection, and keeping Θ in bfloat16 avoids it.
"""

from __future__ import annotations

import io

import pytest
import torch
from transformers import AutoModelForCausalLM


def _stored_bytes(model) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def _series_linears(model) -> dict[str, torch.nn.Module]:
    return {name: module for name, module in model.named_modules() if name.endswith(("mlp.theta", "mlp.in_proj"))}


def _load(release):
    return AutoModelForCausalLM.from_pretrained(release, trust_remote_code=True, dtype=torch.float32).eval()


def _ids():
    return torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))


def test_torchao_int8_weight_only_quantises_theta(tiny_release):
    quantization = pytest.importorskip("torchao.quantization")
    model = _load(tiny_release)
    before = _stored_bytes(model)
    with torch.no_grad():
        reference = model(_ids()).logits
    quantization.quantize_(model, quantization.Int8WeightOnlyConfig())
    linears = _series_linears(model)
    assert linears and all(type(m.weight).__name__ != "Parameter" or m.weight.dtype == torch.int8
                           for m in linears.values()), {n: type(m.weight).__name__ for n, m in linears.items()}
    assert _stored_bytes(model) < 0.45 * before  # float32 -> int8 weights (norms and scales stay float)
    with torch.no_grad():
        quantised = model(_ids()).logits
    assert torch.isfinite(quantised).all() and quantised.shape == reference.shape


def test_quanto_int8_quantises_theta(tiny_release):
    quanto = pytest.importorskip("optimum.quanto")
    model = _load(tiny_release)
    quanto.quantize(model, weights=quanto.qint8)
    quanto.freeze(model)
    linears = _series_linears(model)
    assert linears and all(type(m).__name__ == "QLinear" for m in linears.values())
    with torch.no_grad():
        assert torch.isfinite(model(_ids()).logits).all()


def test_theta_kept_in_bfloat16_beside_a_float32_model(tiny_release):
    # The recipe that keeps fidelity: quantise the other linears, hold Θ in bfloat16.
    model = _load(tiny_release)
    with torch.no_grad():
        reference = model(_ids()).logits
        for name, module in model.named_modules():
            if name.endswith("mlp.theta"):
                module.to(torch.bfloat16)
        mixed = model(_ids()).logits
    assert mixed.dtype == torch.float32
    assert ((mixed - reference).norm() / reference.norm()) < 2e-2
