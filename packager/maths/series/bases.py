"""Series bases in float64, matching the runtime's `SeriesBasis` exactly (a test checks both agree).

The variable is the normalised pre-activation t = s (g - z0) / h. `linear` extrapolation continues each
basis function by its tangent outside [-1, 1]; the design matrix stays linear in the coefficients, so a
least-squares fit can account for the tails of the calibration data directly.
"""

from __future__ import annotations

import torch

BASES = ("monomial", "chebyshev")
EXTRAPOLATIONS = ("none", "linear")


def design(t: torch.Tensor, order: int, basis: str, extrapolation: str) -> torch.Tensor:
    """B_n(t) for n = 0..order, shape [..., order+1], in float64."""
    if basis not in BASES:
        raise ValueError(f"unknown basis {basis!r}; expected one of {BASES}")
    if extrapolation not in EXTRAPOLATIONS:
        raise ValueError(f"unknown extrapolation {extrapolation!r}; expected one of {EXTRAPOLATIONS}")
    t = t.double().unsqueeze(-1)
    n = torch.arange(order + 1, dtype=torch.float64, device=t.device)
    inside = t.clamp(-1.0, 1.0) if extrapolation == "linear" else t
    if basis == "chebyshev":
        values = _chebyshev(inside.squeeze(-1), order)
    else:
        values = inside.pow(n)
    if extrapolation == "linear":
        sign = torch.where(n % 2 == 0, 1.0, -1.0).double()
        degree = n * n if basis == "chebyshev" else n
        beyond = t - inside
        values = values + beyond * torch.where(beyond > 0, degree, -sign * degree)
    return values


def _chebyshev(t: torch.Tensor, order: int) -> torch.Tensor:
    """T_0..T_order by the three-term recurrence (valid for any real t)."""
    columns = [torch.ones_like(t)]
    if order >= 1:
        columns.append(t)
    for _ in range(2, order + 1):
        columns.append(2.0 * t * columns[-1] - columns[-2])
    return torch.stack(columns, dim=-1)


def evaluate(coefficients: torch.Tensor, t: torch.Tensor, basis: str, extrapolation: str) -> torch.Tensor:
    """sum_n c_n B_n(t); coefficients [..., N+1] broadcast against t [..., K] -> [..., K]."""
    order = coefficients.shape[-1] - 1
    return (design(t, order, basis, extrapolation) * coefficients.double().unsqueeze(-2)).sum(-1)
