"""The published closed-form attack on TaylorMLP (TaylorAttack), implemented from its description.

Assumptions of the published attack, kept as published: the release's bias is the public expansion
point up to one sign bit (`bias_j = -s_j z0_j`, width h = 1), the released coefficients are Taylor
coefficients `f^(n)(z0)/n!` in the monomial basis, and the only perturbation is the sign s_j. Per
expanded channel it builds the derivative vector `d_n = f^(n)(z0)/n! * s^n` for s = +1 and s = -1, fits
the down column by one-dimensional least squares `w = Θ d / (d . d)`, and keeps the hypothesis with the
lower residual. Gate rows are un-flipped with the chosen sign; up rows and plaintext channels are copied.
"""

from __future__ import annotations

import torch

from packager.stages.audit.attacks import RecoveredMLP, ReleasedMLP, with_plaintext

NAME = "coefficient_ratio"


def recover(mlp: ReleasedMLP) -> RecoveredMLP:
    """Recover the plain MLP weights of one released MLP by the published procedure."""
    blocks = mlp.blocks  # [S, H, N+1]
    bias = mlp.gate_bias[: mlp.expanded]
    best_residual = None
    best = None
    for sign in (1.0, -1.0):
        centre = -sign * bias  # bias = -s z0 with h = 1
        n = torch.arange(mlp.order + 1, dtype=torch.float64)
        derivatives = mlp.activation.taylor(centre, mlp.order) * sign**n  # [S, N+1]
        norm2 = (derivatives * derivatives).sum(-1).clamp(min=1e-300)
        down = torch.einsum("shn,sn->sh", blocks, derivatives) / norm2.unsqueeze(-1)  # [S, H]
        residual = (blocks - down.unsqueeze(-1) * derivatives.unsqueeze(1)).pow(2).sum((1, 2))
        if best is None:
            best_residual, best = residual, (torch.full_like(bias, sign), centre, down)
        else:
            take = residual < best_residual
            best_residual = torch.where(take, residual, best_residual)
            best = (torch.where(take, sign, best[0]), torch.where(take, centre, best[1]),
                    torch.where(take.unsqueeze(-1), down, best[2]))
    signs, centres, down = best
    gate = mlp.gate_rows[: mlp.expanded] * signs.unsqueeze(-1)
    gate_bias = signs * bias + centres  # = 0 by the published assumption
    up = mlp.up_rows[: mlp.expanded] if mlp.gated else None
    return with_plaintext(mlp, gate, up, down.T, gate_bias)
