"""An attacker who knows unswift's fitting method and hardening scheme, but not the release secret.

Limitation: the source's gate projection is assumed to have no bias (true of the Llama, Mistral, Qwen
and Gemma families); with one, z0 is a second unknown and this one-dimensional search understates the
attack (the audit says so in its notes).

Hardened release of an expanded channel j (gate row W_g, up row W_u, down column w, no gate bias):
    gate row  s W_g / h,  bias  -s z0 / h,  up row  a W_u,  Θ_j = (w / a) ⊗ c̃,  c̃_n = c_n s^n,
where c are the method's coefficients of f(z0 + h t) in t ∈ [-1, 1]. Folding the sign into a signed
width h' = s h, c̃ is the method's fit of f(z0 + h' t), and the bias gives z0 = -bias * h'.

The attack, vectorised over channels:
1. Θ_j is rank 1: its dominant right singular vector is the shape of c̃ (the left one is w's direction).
2. Search the one unknown h' (a log grid over both signs, then golden-section refinement) for the
   width at which the activation, with z0 = -bias h', matches that shape.
3. Undo: W_g = h' * released gate row, w = Θ_j q / (q . q) with q the matched coefficients, and the up
   row as released. The secret scale a_j is a gauge: a W_u and w / a compute exactly the original
   function, so the rebuilt MLP is exact even though each of those two vectors is off by a_j.

How step 2 matches depends on what the attacker has:
- `fit="taylor"`: the coefficients are Taylor coefficients, q_n = f^(n)(z0) h'^n / n!; exact match.
- weighted fit, no data: the released polynomial p̃(t) = Σ c̃_n B_n(t) is compared with f(z0 + h' t)
  on t ∈ [-1, 1] with uniform weight (up to a scale). The publisher's fit followed the calibration
  histogram, which the attacker lacks, so the match is approximate.
- weighted fit, with inputs: the attacker runs the release on text of its own, computes each channel's
  released t = gate row . x + bias (no secret needed), and makes the same comparison weighted by that
  histogram of t, as the publisher's fit weighted its calibration histogram. Only the text differs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from packager.maths.series import bases
from packager.stages.audit.attacks import RecoveredMLP, ReleasedMLP, with_plaintext

NAME = "kerckhoffs"
#: |h'| searched over this log10 range (gate pre-activation half-widths of real models lie well inside).
WIDTH_DECADES = (-2.5, 2.5)
GRID_POINTS = 161
GOLDEN_STEPS = 40
#: Points of t ∈ [-1, 1] where the no-data attacker compares the polynomial with the activation.
PROXY_POINTS = 201
#: Histogram bins and uniform floor of the data attacker's weights (the publisher's defaults).
BINS = 256
FLOOR = 0.01
CHUNK = 128

#: The grid search compares at every COARSE-th matching point only; the refinement uses all of them.
COARSE = 8

#: misfit(width [C, G], channels slice, coarse) -> [C, G]
Misfit = Callable[[torch.Tensor, slice, bool], torch.Tensor]


def _cos2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dot = (a * b).sum(-1)
    return dot.pow(2) / (a.pow(2).sum(-1) * b.pow(2).sum(-1)).clamp(min=1e-300)


class _Matcher:
    """The attacker's model of one unit's series as a function of the signed width h'."""

    def __init__(self, mlp: ReleasedMLP, shape: torch.Tensor, inputs: torch.Tensor | None) -> None:
        self.mlp, self.shape = mlp, shape
        self.bias = mlp.gate_bias[: mlp.expanded]
        if mlp.fit == "taylor":
            self.mode = "exact Taylor coefficients"
            return
        if inputs is None or inputs.numel() == 0:
            self.mode = "no data: uniform weight over t in [-1, 1]"
            self.t = torch.linspace(-1.0, 1.0, PROXY_POINTS, dtype=torch.float64).unsqueeze(0)  # [1, K]
            self.weight = torch.ones_like(self.t)
        else:
            self.mode = f"observed density of released t over {inputs.shape[0]} attacker tokens"
            t = inputs.double() @ mlp.gate_rows[: mlp.expanded].T + self.bias  # [T, S]
            self.t, self.weight = _observed_density(t)
        design = bases.design(self.t, mlp.order, mlp.basis, mlp.extrapolation)  # [S or 1, K, N+1]
        self.released = (design * shape.unsqueeze(1)).sum(-1)  # released polynomial (unit shape), [S, K]

    def _values(self, width: torch.Tensor, part: slice, step: int = 1) -> torch.Tensor:
        """f(z0 + h' t) [C, G, K] at the matching points, z0 = -bias h'."""
        t = (self.t[part] if self.t.shape[0] > 1 else self.t)[..., ::step]
        centre = -self.bias[part].unsqueeze(-1) * width
        return self.mlp.activation.value(centre.unsqueeze(-1) + width.unsqueeze(-1) * t.unsqueeze(1))

    def _taylor(self, width: torch.Tensor, part: slice) -> torch.Tensor:
        n = torch.arange(self.mlp.order + 1, dtype=torch.float64)
        centre = -self.bias[part].unsqueeze(-1) * width
        return self.mlp.activation.taylor(centre, self.mlp.order) * width.unsqueeze(-1).pow(n)

    def misfit(self, width: torch.Tensor, part: slice, coarse: bool = False) -> torch.Tensor:
        """1 - cos² between the method's model and the release at widths [C, G] of channels `part`."""
        if self.mode.startswith("exact"):
            return 1.0 - _cos2(self._taylor(width, part), self.shape[part].unsqueeze(1))
        step = COARSE if coarse else 1
        weight = (self.weight[part] if self.weight.shape[0] > 1 else self.weight)[..., ::step].unsqueeze(1)
        values = self._values(width, part, step) * weight.sqrt()
        return 1.0 - _cos2(values, (self.released[part, ::step].unsqueeze(1) * weight.sqrt()))

    def coefficients(self, width: torch.Tensor) -> torch.Tensor:
        """The release's coefficient vectors [S, N+1] rescaled to match f at the solution widths [S]."""
        part = slice(0, self.mlp.expanded)
        if self.mode.startswith("exact"):
            return self._taylor(width.unsqueeze(-1), part).squeeze(1)
        weight = self.weight if self.weight.shape[0] > 1 else self.weight.expand(self.mlp.expanded, -1)
        values = self._values(width.unsqueeze(-1), part).squeeze(1)
        scale = (self.released * values * weight).sum(-1) / (values.pow(2) * weight).sum(-1).clamp(min=1e-300)
        return self.shape / scale.unsqueeze(-1)


def _observed_density(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel: histogram bin centres [S, K] of t [T, S] and the publisher's weights on them."""
    lo, hi = t.min(0).values, t.max(0).values
    hi = torch.maximum(hi, lo + 1e-6)
    step = (hi - lo) / BINS
    centres = lo.unsqueeze(-1) + step.unsqueeze(-1) * (torch.arange(BINS, dtype=torch.float64) + 0.5)
    index = ((t - lo) / step).long().clamp(0, BINS - 1)  # [T, S]
    flat = index + torch.arange(t.shape[1]) * BINS
    counts = torch.bincount(flat.flatten(), minlength=t.shape[1] * BINS).view(-1, BINS).double()
    density = counts / counts.sum(-1, keepdim=True)
    inside = (centres.abs() <= 1.0).double()
    uniform = inside / inside.sum(-1, keepdim=True).clamp(min=1.0)
    return centres, (1.0 - FLOOR) * density + FLOOR * uniform


def _solve_widths(misfit: Misfit, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed width h' per channel minimising the misfit; returns (width, misfit).

    A log grid over both signs (in chunks of channels, at the coarse matching points), then
    golden-section refinement of log|h'| for all channels at once.
    """
    logs = torch.linspace(*WIDTH_DECADES, GRID_POINTS, dtype=torch.float64) * math.log(10.0)
    grid = torch.cat([torch.exp(logs), -torch.exp(logs)])
    if count == 0:
        empty = torch.zeros(0, dtype=torch.float64)
        return empty, empty
    best = torch.cat([misfit(grid.expand(min(CHUNK, count - start), -1), slice(start, start + CHUNK), True)
                      .argmin(-1) for start in range(0, count, CHUNK)])
    sign = torch.where(best < GRID_POINTS, 1.0, -1.0).double()
    step = logs[1] - logs[0]
    lo, hi = logs[best % GRID_POINTS] - step, logs[best % GRID_POINTS] + step
    everything = slice(0, count)

    def cost(log_width: torch.Tensor) -> torch.Tensor:
        return misfit((sign * torch.exp(log_width)).unsqueeze(-1), everything, False).squeeze(-1)

    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = cost(a), cost(b)
    for _ in range(GOLDEN_STEPS):  # keep the side of the lower inner point
        left = fa < fb
        hi, lo = torch.where(left, b, hi), torch.where(left, lo, a)
        a, b = torch.where(left, hi - ratio * (hi - lo), b), torch.where(left, a, lo + ratio * (hi - lo))
        fa, fb = torch.where(left, cost(a), fb), torch.where(left, fa, cost(b))
    middle = (lo + hi) / 2
    return sign * torch.exp(middle), cost(middle)


def recover(mlp: ReleasedMLP, *, inputs: torch.Tensor | None = None) -> RecoveredMLP:
    """Recover the plain MLP weights of one released MLP without the secret.

    Args:
        mlp: the released tensors and public parameters.
        inputs: MLP inputs [T, H] the attacker recorded by running the release on its own text; used
            only for the weighted fit. None: the no-data attack.
    """
    blocks = mlp.blocks  # [S, H, N+1]
    gram = blocks.transpose(1, 2) @ blocks
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    shape = eigenvectors[..., -1]  # dominant right singular vector
    rank1 = (eigenvalues[..., -2].clamp(min=0) / eigenvalues[..., -1].clamp(min=1e-300)).sqrt()
    matcher = _Matcher(mlp, shape, inputs)
    width, misfit = _solve_widths(matcher.misfit, mlp.expanded)
    q = matcher.coefficients(width)  # [S, N+1]
    down = torch.einsum("shn,sn->sh", blocks, q) / (q * q).sum(-1).clamp(min=1e-300).unsqueeze(-1)
    gate = mlp.gate_rows[: mlp.expanded] * width.unsqueeze(-1)
    up = mlp.up_rows[: mlp.expanded] if mlp.gated else None
    extra = {
        "matching": matcher.mode.split(":")[0].split(" over ")[0],
        "rank1_ratio_max": float(rank1.max()) if rank1.numel() else None,
        "shape_misfit_median": float(misfit.median()) if misfit.numel() else None,
    }
    return with_plaintext(mlp, gate, up, down.T, torch.zeros(mlp.expanded, dtype=torch.float64), extra)
