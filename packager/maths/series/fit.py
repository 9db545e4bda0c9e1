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

from packager.maths.series import bases
from packager.maths.series.activations import Activation
from packager.threads import map_blocks

#: Candidate tail masses trimmed from each side when choosing a channel's fitted interval.
TRIM_CANDIDATES = (0.0, 1e-4, 1e-3, 1e-2)
#: Share of the weight spread uniformly over the fitted interval, so empty stretches stay well behaved.
UNIFORM_FLOOR = 0.01
#: Highest Chebyshev degree fitted on the bin centres. A histogram of a few hundred bins cannot determine
#: more that way (beyond ~2 sqrt(bins) the least-squares polynomial is free to oscillate between bin
#: centres). Above it, channels whose fit at this degree is not yet at float64 resolution are refitted
#: by `fit_fine` (the histogram read as a piecewise-constant density, integrated by Gauss-Legendre points
#: inside each bin: the continuous weighted problem, stable to `FINE_MAX_DEGREE`); the others' higher
#: coefficients are 0, terms the padding criterion never lets a release ship (`packager.maths.padding`).
CHEBYSHEV_FIT_LIMIT = 32
#: Highest degree `fit_fine` solves.
FINE_MAX_DEGREE = 128
#: Gauss-Legendre points per histogram bin in `fit_fine` (16 give the same coefficients on the demo).
FINE_POINTS = 8
#: A channel whose weighted error at `CHEBYSHEV_FIT_LIMIT` is above this share of its activation's
#: weighted RMS is refitted at the requested degree (on the demo: 6.5 % of channels, the widest).
FINE_REFIT_ERROR = 1e-11


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

    def interval(self, trim: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(centre, half width) per channel of the fitting interval with `trim` of the mass cut off each side."""
        lo = self.quantile(trim) if trim > 0 else self.lo.double()
        hi = self.quantile(1.0 - trim) if trim > 0 else self.hi.double()
        hi = torch.maximum(hi, lo + 1e-6)
        return (lo + hi) / 2, (hi - lo) / 2


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
    """Least-squares series over each channel's calibrated distribution, best interval per channel.

    In the Chebyshev basis the weighted normal equations are assembled from Chebyshev moments
    (T_n T_m = (T_{n+m} + T_{|n-m|}) / 2, and a closed form for the linear continuation), so no
    [channels, bins, N+1] least-squares problem is solved: a few array passes per order. Degrees above
    `CHEBYSHEV_FIT_LIMIT`: see `fit_weighted_orders`.
    """
    return fit_weighted_orders(activation, histogram, (order,), basis=basis, extrapolation=extrapolation,
                               trims=trims, floor=floor)[0]


def fit_weighted_orders(
    activation: Activation, histogram: Histogram, orders: tuple[int, ...], *,
    basis: str = "chebyshev", extrapolation: str = "linear",
    trims: tuple[float, ...] = TRIM_CANDIDATES, floor: float = UNIFORM_FLOOR,
) -> list[ChannelFit]:
    """`fit_weighted` at several orders at once: they share each interval candidate's Chebyshev moments.

    Channels are processed in blocks of `_CHANNEL_BLOCK` so the working arrays stay in cache, the blocks
    spread over the cores (`packager.threads.map_blocks`). Orders above `CHEBYSHEV_FIT_LIMIT` (Chebyshev
    basis): see `_beyond_limit`.
    """
    if basis == "chebyshev" and max(orders) > CHEBYSHEV_FIT_LIMIT:
        return _beyond_limit(activation, histogram, orders, extrapolation=extrapolation, trims=trims, floor=floor)
    count = histogram.counts.shape[0]
    if count > _CHANNEL_BLOCK:
        def block(s: int) -> list[ChannelFit]:
            return fit_weighted_orders(activation, Histogram(histogram.lo[s : s + _CHANNEL_BLOCK],
                                                             histogram.hi[s : s + _CHANNEL_BLOCK],
                                                             histogram.counts[s : s + _CHANNEL_BLOCK]),
                                       orders, basis=basis, extrapolation=extrapolation, trims=trims, floor=floor)
        blocks = map_blocks(block, list(range(0, count, _CHANNEL_BLOCK)))
        return [_concat([block[k] for block in blocks]) for k in range(len(orders))]
    x = histogram.centres
    target = activation.value(x)
    density = histogram.density
    best: list[ChannelFit | None] = [None] * len(orders)
    for trim in trims:
        centre, half_width = histogram.interval(trim)
        t = (x - centre.unsqueeze(-1)) / half_width.unsqueeze(-1)
        inside = (t.abs() <= 1.0).double()
        uniform = inside / inside.sum(-1, keepdim=True).clamp(min=1.0)
        weight = (1.0 - floor) * density + floor * uniform
        if basis == "chebyshev":
            solved = _chebyshev_least_squares(t, target, weight, list(orders), extrapolation)
        else:
            solved = []
            for order in orders:
                design = bases.design(t, order, basis, extrapolation)  # [C, K, N+1]
                root = weight.sqrt().unsqueeze(-1)
                solution = torch.linalg.lstsq(design * root, (target * weight.sqrt()).unsqueeze(-1)).solution
                solved.append((solution.squeeze(-1), (design @ solution).squeeze(-1)))
        for k, (coefficients, values) in enumerate(solved):
            error = _weighted_error(values, target, density)
            candidate = ChannelFit(centre, half_width, coefficients, error, basis, extrapolation)
            best[k] = candidate if best[k] is None else _keep_better(best[k], candidate)
    return best  # type: ignore[return-value]


#: Channels fitted together (arrays of about 1 MB per pass: they stay in cache).
_CHANNEL_BLOCK = 256
#: Channels solved together by `fit_fine` (its table is [block, 2N+1, bins * FINE_POINTS] float64).
_FINE_BLOCK = 16


def _gauss_legendre(points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes in [-1, 1] and weights summing to 1 of the `points`-point Gauss-Legendre rule."""
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(points)
    return torch.tensor(x, dtype=torch.float64), torch.tensor(w / 2.0, dtype=torch.float64)


def gauss_grid(histogram: Histogram, points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points g [C, bins*points] and their density mass (each bin's mass split by Gauss-Legendre weights).

    The histogram read as a density constant inside each bin: integrals against it become sums.
    """
    nodes, weights = _gauss_legendre(points)
    step = (histogram.hi - histogram.lo).double() / histogram.counts.shape[-1]
    g = histogram.centres.unsqueeze(-1) + (step / 2).view(-1, 1, 1) * nodes
    mass = histogram.density.unsqueeze(-1) * weights
    return g.flatten(1), mass.flatten(1)


def _beyond_limit(activation: Activation, histogram: Histogram, orders: tuple[int, ...], *, extrapolation: str,
                  trims: tuple[float, ...], floor: float) -> list[ChannelFit]:
    """Fits at orders above `CHEBYSHEV_FIT_LIMIT`: the bin-centre fit at the limit, and `fit_fine` at the
    order for the channels whose limit fit has not reached float64 resolution (the rest get zeros above)."""
    low = tuple(min(order, CHEBYSHEV_FIT_LIMIT) for order in orders)
    fits = fit_weighted_orders(activation, histogram, tuple(sorted(set(low))), extrapolation=extrapolation,
                               trims=trims, floor=floor)
    by_order = dict(zip(sorted(set(low)), fits, strict=True))
    limit_fit = by_order[min(max(orders), CHEBYSHEV_FIT_LIMIT)]
    scale = (activation.value(histogram.centres).pow(2) * histogram.density).sum(-1).sqrt()
    refit = torch.nonzero(limit_fit.error > FINE_REFIT_ERROR * scale.clamp(min=1e-300)).flatten()
    out = []
    for order, fitted in zip(orders, low, strict=True):
        fit = by_order[fitted]
        if order <= CHEBYSHEV_FIT_LIMIT:
            out.append(fit)
            continue
        coefficients = torch.nn.functional.pad(fit.coefficients, (0, order - fitted))
        centre, half, error = fit.centre.clone(), fit.half_width.clone(), fit.error.clone()
        if refit.numel():
            part = Histogram(histogram.lo[refit], histogram.hi[refit], histogram.counts[refit])
            fine = fit_fine(activation, part, order, extrapolation=extrapolation, trims=trims, floor=floor)
            better = fine.error < error[refit]
            chosen = refit[better]
            centre[chosen], half[chosen] = fine.centre[better], fine.half_width[better]
            coefficients[chosen], error[chosen] = fine.coefficients[better], fine.error[better]
        out.append(ChannelFit(centre, half, coefficients, error, "chebyshev", extrapolation))
    return out


def fit_fine(activation: Activation, histogram: Histogram, order: int, *, extrapolation: str = "linear",
             trims: tuple[float, ...] = TRIM_CANDIDATES, floor: float = UNIFORM_FLOOR,
             points: int = FINE_POINTS) -> ChannelFit:
    """The weighted Chebyshev fit with the histogram read as a piecewise-constant density.

    The target f is known everywhere; only the weight comes from the histogram. Integrating with `points`
    Gauss-Legendre points per bin turns the sum over bin centres into a quadrature of the continuous
    weighted problem, which determines degrees up to `FINE_MAX_DEGREE` (the same moment-based solver on
    bins x points nodes). The interval is chosen among the same trimmed candidates, by the weighted error
    on the fine grid.
    """
    if order > FINE_MAX_DEGREE:
        raise ValueError(f"order {order} > {FINE_MAX_DEGREE}, the highest degree fitted")
    parts = []
    for s in range(0, histogram.counts.shape[0], _FINE_BLOCK):
        part = Histogram(histogram.lo[s:s + _FINE_BLOCK], histogram.hi[s:s + _FINE_BLOCK],
                         histogram.counts[s:s + _FINE_BLOCK])
        g, mass = gauss_grid(part, points)
        target = activation.value(g)
        node_weight = _gauss_legendre(points)[1].repeat(part.counts.shape[-1])  # each node's share of its bin
        best = None
        for trim in trims:
            centre, half = part.interval(trim)
            t = (g - centre.unsqueeze(-1)) / half.unsqueeze(-1)
            inside = (t.abs() <= 1.0).double() * node_weight
            uniform = inside / inside.sum(-1, keepdim=True).clamp(min=1e-300)
            weight = (1.0 - floor) * mass + floor * uniform
            coefficients, values = _chebyshev_least_squares(t, target, weight, [order], extrapolation)[0]
            error = ((values - target) ** 2 * mass).sum(-1).sqrt()
            candidate = ChannelFit(centre, half, coefficients, error, "chebyshev", extrapolation)
            best = candidate if best is None else _keep_better(best, candidate)
        parts.append(best)
    if not parts:
        empty = torch.zeros(0, dtype=torch.float64)
        return ChannelFit(empty, empty, torch.zeros(0, order + 1, dtype=torch.float64), empty, "chebyshev",
                          extrapolation)
    return _concat(parts)


def _concat(fits: list[ChannelFit]) -> ChannelFit:
    first = fits[0]
    return ChannelFit(*(torch.cat([getattr(f, name) for f in fits]) for name in
                        ("centre", "half_width", "coefficients", "error")), first.basis, first.extrapolation)


def _chebyshev_least_squares(t: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, orders: list[int],
                             extrapolation: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """argmin_c sum_k w_k (sum_n c_n B_n(t_k) - y_k)^2 per channel and order, B = Chebyshev (+ linear tail).

    t, target, weight: [C, K]. Returns, per order N, the coefficients [C, N+1] and the fitted values at
    t [C, K]. T_0..T_2N are evaluated once by the recurrence (for the largest N); each Gram matrix
    comes from their weighted sums (moments). Solved by Cholesky with a tiny relative ridge; channels
    whose Gram matrix is still not positive definite use `lstsq` on the explicit design.
    """
    largest = max(orders)
    linear = extrapolation == "linear"
    s = t.clamp(-1.0, 1.0) if linear else t  # T_n T_m = (T_{n+m} + T_{|n-m|}) / 2 holds for every real t
    w_in = torch.where(t.abs() <= 1.0, weight, 0.0) if linear else weight
    powers = t.new_empty(t.shape[0], 2 * largest + 1, t.shape[1])  # T_j(s), j = 0..2N
    powers[:, 0] = 1.0
    if largest > 0:
        powers[:, 1] = s
    twice = 2.0 * s
    for j in range(2, 2 * largest + 1):
        torch.mul(twice, powers[:, j - 1], out=powers[:, j])
        powers[:, j] -= powers[:, j - 2]
    sums = torch.bmm(powers, torch.stack([w_in, w_in * target], dim=-1))  # [C, 2N+1, 2]
    excess = (t.abs() - 1.0).clamp(min=0.0)
    sides = []
    if linear:  # beyond ±1: B_n(t) = sign_n (1 + e n^2), e = |t| - 1, sign_n = 1 above, (-1)^n below
        for side in (t > 1.0, t < -1.0):
            w_side = torch.where(side, weight, 0.0)
            wy_side = w_side * target
            sides.append(((w_side.sum(-1), (w_side * excess).sum(-1), (w_side * excess * excess).sum(-1)),
                          (wy_side.sum(-1), (wy_side * excess).sum(-1))))
    results = []
    for order in orders:
        size = order + 1
        moments, rhs = sums[:, : 2 * order + 1, 0], sums[:, :size, 1]
        n = torch.arange(size, device=t.device)
        gram = 0.5 * (moments[:, n[:, None] + n[None, :]] + moments[:, (n[:, None] - n[None, :]).abs()])
        square = (n * n).to(t.dtype)
        parity = 1.0 - 2.0 * (n % 2).to(t.dtype)
        if linear:
            pair_sum, pair_product = square[:, None] + square[None, :], square[:, None] * square[None, :]
            for ((p0, p1, p2), (q0, q1)), sign in zip(sides, (torch.ones_like(parity), parity), strict=True):
                block = p0[:, None, None] + p1[:, None, None] * pair_sum + p2[:, None, None] * pair_product
                gram = gram + block * (sign[:, None] * sign[None, :])
                rhs = rhs + (q0[:, None] + q1[:, None] * square) * sign
        scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp(min=1e-300)
        gram = gram + (1e-13 * scale)[:, None, None] * torch.eye(size, dtype=t.dtype, device=t.device)
        factor, info = torch.linalg.cholesky_ex(gram)
        coefficients = torch.cholesky_solve(rhs.unsqueeze(-1), factor).squeeze(-1)
        failed = (info != 0) | ~torch.isfinite(coefficients).all(-1)
        if bool(failed.any()):
            design = bases.design(t[failed], order, "chebyshev", extrapolation)
            root = weight[failed].sqrt()
            solved = torch.linalg.lstsq(design * root.unsqueeze(-1), (target[failed] * root).unsqueeze(-1))
            coefficients[failed] = solved.solution.squeeze(-1)
        values = torch.bmm(coefficients.unsqueeze(1), powers[:, :size]).squeeze(1)
        if linear:  # plus the tangent beyond ±1: T_n'(1) = n^2, T_n'(-1) = (-1)^(n+1) n^2
            above = (coefficients * square).sum(-1, keepdim=True)
            below = -(coefficients * square * parity).sum(-1, keepdim=True)
            beyond = t - s
            values = values + torch.where(beyond > 0, above, below) * beyond
        results.append((coefficients, values))
    return results


def _keep_better(a: ChannelFit, b: ChannelFit) -> ChannelFit:
    take_b = b.error < a.error
    pick = lambda u, v: torch.where(take_b.unsqueeze(-1) if u.dim() > 1 else take_b, v, u)  # noqa: E731
    return ChannelFit(
        pick(a.centre, b.centre), pick(a.half_width, b.half_width), pick(a.coefficients, b.coefficients),
        pick(a.error, b.error), a.basis, a.extrapolation,
    )
