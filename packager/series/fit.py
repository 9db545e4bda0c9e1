"""Per-channel coefficients of the series that replaces f(g) on each expanded channel.

Two methods:
- `taylor`: the paper's coefficients f^(n)(z0)/n! about the midpoint of the calibrated range
  (monomial basis; with `normalise`, in the variable t = (g - z0)/h instead of g - z0).
- `weighted`: a least-squares fit in a well-conditioned basis (Chebyshev) over the calibrated
  distribution of g, with linear continuation beyond the fitted interval. The fitted interval is chosen
  per channel among quantile-trimmed candidates by the error it leaves on the calibration histogram.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from packager.series import bases
from packager.series.activations import Activation

#: Candidate tail masses trimmed from each side when choosing a channel's fitted interval.
TRIM_CANDIDATES = (0.0, 1e-4, 1e-3, 1e-2)
#: Share of the weight spread uniformly over the fitted interval, so empty stretches stay well behaved.
UNIFORM_FLOOR = 0.01


@dataclass(frozen=True)
class Histogram:
    """Per-channel histogram of the pre-activation g: `counts[c, b]` over `bins` equal bins in [lo, hi]."""

    lo: torch.Tensor
    hi: torch.Tensor
    counts: torch.Tensor

    @property
    def centres(self) -> torch.Tensor:
        bins = self.counts.shape[-1]
        step = (self.hi - self.lo).double() / bins
        offsets = torch.arange(bins, dtype=torch.float64) + 0.5
        return self.lo.double().unsqueeze(-1) + step.unsqueeze(-1) * offsets

    @property
    def density(self) -> torch.Tensor:
        counts = self.counts.double()
        return counts / counts.sum(-1, keepdim=True).clamp(min=1.0)

    def quantile(self, q: float) -> torch.Tensor:
        """Per-channel q-quantile, linear within bins."""
        cdf = self.density.cumsum(-1)
        bins = self.counts.shape[-1]
        index = torch.searchsorted(cdf, torch.full((*cdf.shape[:-1], 1), q, dtype=torch.float64))
        index = index.clamp(max=bins - 1).squeeze(-1)
        before = torch.where(index > 0, cdf.gather(-1, (index - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1), 0.0)
        mass = self.density.gather(-1, index.unsqueeze(-1)).squeeze(-1).clamp(min=1e-300)
        frac = ((q - before) / mass).clamp(0.0, 1.0)
        step = (self.hi - self.lo).double() / bins
        return self.lo.double() + step * (index.double() + frac)


@dataclass(frozen=True)
class ChannelFit:
    """Coefficients in the variable t = (g - centre) / half_width, plus the fit's own error estimate."""

    centre: torch.Tensor
    half_width: torch.Tensor
    coefficients: torch.Tensor
    error: torch.Tensor
    basis: str
    extrapolation: str

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        """The series' value at pre-activations g [C, K] (float64)."""
        t = (g.double() - self.centre.unsqueeze(-1)) / self.half_width.unsqueeze(-1)
        return bases.evaluate(self.coefficients, t, self.basis, self.extrapolation)


def _weighted_error(fit_values: torch.Tensor, target: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
    return ((fit_values - target) ** 2 * density).sum(-1).sqrt()


def fit_taylor(
    activation: Activation, lo: torch.Tensor, hi: torch.Tensor, order: int, *,
    normalise: bool, histogram: Histogram | None = None,
) -> ChannelFit:
    """The paper's series: Taylor coefficients about the midpoint of [lo, hi], monomial basis."""
    centre = (lo.double() + hi.double()) / 2
    half_width = ((hi.double() - lo.double()) / 2).clamp(min=1e-6) if normalise else torch.ones_like(centre)
    n = torch.arange(order + 1, dtype=torch.float64)
    coefficients = activation.taylor(centre, order) * half_width.unsqueeze(-1).pow(n)
    fit = ChannelFit(centre, half_width, coefficients, torch.zeros_like(centre), "monomial", "none")
    if histogram is None:
        return fit
    x = histogram.centres
    error = _weighted_error(fit(x), activation.value(x), histogram.density)
    return ChannelFit(centre, half_width, coefficients, error, "monomial", "none")


def fit_weighted(
    activation: Activation, histogram: Histogram, order: int, *,
    basis: str = "chebyshev", extrapolation: str = "linear",
    trims: tuple[float, ...] = TRIM_CANDIDATES, floor: float = UNIFORM_FLOOR,
) -> ChannelFit:
    """Least-squares series over each channel's calibrated distribution, best interval per channel."""
    x = histogram.centres
    target = activation.value(x)
    density = histogram.density
    best: ChannelFit | None = None
    for trim in trims:
        lo = histogram.quantile(trim) if trim > 0 else histogram.lo.double()
        hi = histogram.quantile(1.0 - trim) if trim > 0 else histogram.hi.double()
        hi = torch.maximum(hi, lo + 1e-6)
        centre, half_width = (lo + hi) / 2, (hi - lo) / 2
        t = (x - centre.unsqueeze(-1)) / half_width.unsqueeze(-1)
        inside = (t.abs() <= 1.0).double()
        uniform = inside / inside.sum(-1, keepdim=True).clamp(min=1.0)
        weight = (1.0 - floor) * density + floor * uniform
        design = bases.design(t, order, basis, extrapolation)  # [C, K, N+1]
        root = weight.sqrt().unsqueeze(-1)
        coefficients = torch.linalg.lstsq(design * root, (target * weight.sqrt()).unsqueeze(-1)).solution
        coefficients = coefficients.squeeze(-1)
        values = (design * coefficients.unsqueeze(-2)).sum(-1)
        error = _weighted_error(values, target, density)
        candidate = ChannelFit(centre, half_width, coefficients, error, basis, extrapolation)
        best = candidate if best is None else _keep_better(best, candidate)
    assert best is not None
    return best


def _keep_better(a: ChannelFit, b: ChannelFit) -> ChannelFit:
    take_b = b.error < a.error
    pick = lambda u, v: torch.where(take_b.unsqueeze(-1) if u.dim() > 1 else take_b, v, u)  # noqa: E731
    return ChannelFit(
        pick(a.centre, b.centre), pick(a.half_width, b.half_width), pick(a.coefficients, b.coefficients),
        pick(a.error, b.error), a.basis, a.extrapolation,
    )
