"""Truncated power series ("jets") in float64: exact Taylor coefficients of activations to any order.

A jet `a` of shape [..., N+1] holds a_n = f^(n)(x0) / n!. Composition rules (Cauchy product,
exp, reciprocal, integration of a derivative) are exact recurrences, so coefficients come out at full
float64 precision instead of the research code's per-dtype derivative formulas.
"""

from __future__ import annotations

import math

import torch


def variable(x0: torch.Tensor, order: int) -> torch.Tensor:
    """The jet of the identity at x0: [x0, 1, 0, ...]."""
    jet = torch.zeros(*x0.shape, order + 1, dtype=torch.float64, device=x0.device)
    jet[..., 0] = x0.double()
    if order >= 1:
        jet[..., 1] = 1.0
    return jet


def mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cauchy product, truncated to the common order."""
    order = a.shape[-1] - 1
    out = torch.zeros_like(a)
    for n in range(order + 1):
        out[..., n] = (a[..., : n + 1] * b[..., : n + 1].flip(-1)).sum(-1)
    return out


def exp(a: torch.Tensor) -> torch.Tensor:
    """exp of a jet: e_0 = exp(a_0), e_n = (1/n) sum_k k a_k e_{n-k}."""
    order = a.shape[-1] - 1
    out = torch.zeros_like(a)
    out[..., 0] = torch.exp(a[..., 0])
    k = torch.arange(1, order + 1, dtype=a.dtype, device=a.device)
    for n in range(1, order + 1):
        out[..., n] = (k[:n] * a[..., 1 : n + 1] * out[..., :n].flip(-1)).sum(-1) / n
    return out


def reciprocal(a: torch.Tensor) -> torch.Tensor:
    """1/a of a jet with a_0 != 0: r_0 = 1/a_0, r_n = -(1/a_0) sum_{k>=1} a_k r_{n-k}."""
    order = a.shape[-1] - 1
    out = torch.zeros_like(a)
    out[..., 0] = 1.0 / a[..., 0]
    for n in range(1, order + 1):
        out[..., n] = -(a[..., 1 : n + 1] * out[..., :n].flip(-1)).sum(-1) * out[..., 0]
    return out


def integrate(derivative: torch.Tensor, inner: torch.Tensor, value0: torch.Tensor) -> torch.Tensor:
    """Jet of F(inner) given the jet of F'(inner) and F(inner_0): F_n = (1/n) sum_k k inner_k F'_{n-k}."""
    order = inner.shape[-1] - 1
    out = torch.zeros_like(inner)
    out[..., 0] = value0
    k = torch.arange(1, order + 1, dtype=inner.dtype, device=inner.device)
    for n in range(1, order + 1):
        out[..., n] = (k[:n] * inner[..., 1 : n + 1] * derivative[..., :n].flip(-1)).sum(-1) / n
    return out


def scale(a: torch.Tensor, factor: float) -> torch.Tensor:
    return a * factor


def shift(a: torch.Tensor, constant: float) -> torch.Tensor:
    out = a.clone()
    out[..., 0] = out[..., 0] + constant
    return out


def sigmoid(a: torch.Tensor) -> torch.Tensor:
    """sigmoid of a jet, written so that exp never overflows: e^{-|x|} in both branches."""
    negative = a[..., :1] < 0
    flipped = torch.where(negative, a, -a)  # -|x| expansion
    e = exp(flipped)
    r = reciprocal(shift(e, 1.0))  # 1 / (1 + e^{-|x|})
    # x >= 0: 1/(1+e^{-x}); x < 0: e^{x}/(1+e^{x}).
    return torch.where(negative, mul(e, r), r)


def tanh(a: torch.Tensor) -> torch.Tensor:
    return shift(scale(sigmoid(scale(a, 2.0)), 2.0), -1.0)


def erf(a: torch.Tensor) -> torch.Tensor:
    """erf of a jet, integrating erf'(y) = 2/sqrt(pi) exp(-y^2) along the inner jet."""
    derivative = scale(exp(scale(mul(a, a), -1.0)), 2.0 / math.sqrt(math.pi))
    return integrate(derivative, a, torch.special.erf(a[..., 0]))
