"""TaylorMLP transform of one MLP: fits, channel selection, hardening and the release tensors.

Pure tensor mathematics: per-channel parameters in float64, release tensors assembled in float64 (to
measure) or in the release dtype (to write); `convert` does the I/O.

For an expanded channel j with fit (z0_j, h_j, c_j), secret sign s_j, scale a_j and the source rows
W_g[j], b_g[j], W_u[j] and down column w_j, the release holds
    gate row  s_j W_g[j] / h_j,  bias  s_j (b_g[j] - z0_j) / h_j,  up row  a_j W_u[j],
    Θ_{j,n} = w_j c_{j,n} s_j^n / a_j,
so that Σ_n Θ_{j,n} B_n(t_j) u'_j = w_j p_j(g_j) u_j, with p_j ≈ f on the calibrated range.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field, replace

import torch

from packager.maths import padding
from packager.maths.series.activations import Activation
from packager.maths.series.fit import ChannelFit, Histogram, fit_taylor, fit_weighted, fit_weighted_orders
from packager.maths.statistics import LayerStats

FITS = ("weighted", "taylor")
#: Range of the secret per-channel scale a_j (log-uniform); powers of two would leave exact copies.
SCALE_RANGE = (0.5, 2.0)
#: Scales are never drawn inside this band, so no up row is released within 20 % of its source value.
SCALE_EXCLUDED = (0.8, 1.25)


@dataclass(frozen=True)
class Hardening:
    """Which secret transformations are applied; all randomness derives from the release secret.

    `window` (0 = off) widens each expanded channel's normalised interval by a secret stretch
    ρ_j ∈ [1 + window/2, 1 + window] and shifts it by δ_j ∈ ±(ρ_j - 1) (in half-widths), so that the
    calibrated interval is a secret sub-window of the released t ∈ [-1, 1]; the series is re-expanded
    exactly, and only activations beyond the calibrated interval (where the series would otherwise be
    continued linearly) see the polynomial a little further. See docs/THREAT_MODEL.md for what it buys.
    """

    signs: bool = True
    scales: bool = True
    permutation: bool = True
    normalise: bool = True  # h_j = half-range (hides the centre in the bias); False = the paper's h = 1
    window: float = 0.0

    @classmethod
    def paper(cls) -> Hardening:
        """The research release: a random sign per channel, plaintext centres, nothing else."""
        return cls(signs=True, scales=False, permutation=False, normalise=False)

    def to_json(self) -> dict:
        """Every hardening parameter except the secret (config.json["unswift"]["hardening"])."""
        return {"signs": self.signs, "scales": self.scales, "permutation": self.permutation,
                "normalised_centres": self.normalise,
                "scale_range": list(SCALE_RANGE) if self.scales else None,
                "scale_excluded": list(SCALE_EXCLUDED) if self.scales else None,
                "window": self.window}


@dataclass(frozen=True)
class LayerPlan:
    """One layer's fits for every channel and the score used to rank channels for expansion.

    `histogram`, `out_weight` (|w_j| up_rms_j) and `out_energy` (the unit's E||y||²) are what the padding
    criterion needs (`release_orders`); `out_energy_source` says whether calibration measured the energy.
    """

    fit: ChannelFit
    score: torch.Tensor  # larger = worse to expand (expected output error), per channel
    width: torch.Tensor  # calibrated range max - min, per channel
    #: With order allocation: the same channels fitted at the base and boost orders, and their scores.
    base: ChannelFit | None = None
    base_score: torch.Tensor | None = None
    boost: ChannelFit | None = None
    boost_score: torch.Tensor | None = None
    histogram: Histogram | None = None
    out_weight: torch.Tensor | None = None
    out_energy: float | None = None
    out_energy_source: str = "calibration"
    #: Per-channel orders wanted (-1: plaintext) instead of `fit`'s order on every expanded channel
    #: (`--slowdown` ships the orders its truncation search keeps); still capped by the criterion.
    orders: torch.Tensor | None = None
    #: E_hist[B_n(t)²] of `fit`, `base`, `boost`, computed once (see `release_orders`).
    moments: dict = field(default_factory=dict, compare=False, repr=False)


def allocation_orders(order: int) -> tuple[int, int] | None:
    """(base, boost) orders of the boost allocation for a nominal order N, or None when N is too small.

    Most channels get N-1 terms and a fraction 1/(N+1) of them gets 2N: the coefficient columns, hence
    the bytes read per token, are exactly those of a uniform order N (see `boost_channels`).
    """
    return (order - 1, 2 * order) if order >= 2 else None


def fit_layer(activation: Activation, stats: LayerStats, down_norms: torch.Tensor, *, order: int, fit: str,
              normalise: bool, allocation: str = "uniform") -> LayerPlan:
    """Fit every channel of one layer and score it by the output error it would add.

    With `allocation="boost"` (weighted fit only) every channel is also fitted at both allocation
    orders, so `boost_channels` can choose between the uniform order and the allocation.
    """
    histogram = stats.histogram
    up = stats.up_rms.double() if stats.up_rms.abs().sum() > 0 else torch.ones_like(stats.min.double())
    weight = up * down_norms.double()
    width = (stats.max - stats.min).double()
    if stats.out_energy is not None:
        energy = {"out_energy": float(stats.out_energy[0]), "out_energy_source": "calibration"}
    else:
        energy = {"out_energy": padding.diagonal_out_energy(activation, histogram, weight),
                  "out_energy_source": "estimated without cross terms"}
    common = {"histogram": histogram, "out_weight": weight, **energy}
    if fit == "taylor":
        channel_fit = fit_taylor(activation, stats.min, stats.max, order, normalise=normalise, histogram=histogram)
        return LayerPlan(channel_fit, channel_fit.error * weight, width, **common)
    if fit != "weighted":
        raise ValueError(f"unknown fit {fit!r}; expected one of {FITS}")
    orders = allocation_orders(order) if allocation == "boost" else None
    if orders is None:
        channel_fit = fit_weighted(activation, histogram, order)
        return LayerPlan(channel_fit, channel_fit.error * weight, width, **common)
    channel_fit, base, boost = fit_weighted_orders(activation, histogram, (order, *orders))  # one pass
    return LayerPlan(channel_fit, channel_fit.error * weight, width, base, base.error * weight,
                     boost, boost.error * weight, **common)


def _moments(plan: LayerPlan, name: str) -> torch.Tensor:
    if name not in plan.moments:
        plan.moments[name] = padding.basis_moments(getattr(plan, name), plan.histogram)
    return plan.moments[name]


def release_fits(plan: LayerPlan, expanded: torch.Tensor, boosted: torch.Tensor | None
                 ) -> tuple[ChannelFit, torch.Tensor, torch.Tensor]:
    """(fit, wanted orders, basis moments) of every channel of one unit before the padding cap.

    Uniform: `plan.fit` for every expanded channel. With order allocation: the boost fit on `boosted`
    channels, the base fit (zero-padded) on the others. Wanted orders are -1 on plaintext channels.
    """
    if boosted is None:
        order = plan.fit.coefficients.shape[-1] - 1
        wanted = torch.where(expanded, order if plan.orders is None else plan.orders, -1)
        return plan.fit, wanted, _moments(plan, "fit") if plan.histogram is not None else None
    base, boost = plan.base, plan.boost
    width = boost.coefficients.shape[-1]
    pad = width - base.coefficients.shape[-1]
    column = boosted.unsqueeze(-1)
    fit = replace(boost, centre=torch.where(boosted, boost.centre, base.centre),
                  half_width=torch.where(boosted, boost.half_width, base.half_width),
                  coefficients=torch.where(column, boost.coefficients,
                                           torch.nn.functional.pad(base.coefficients, (0, pad))),
                  error=torch.where(boosted, boost.error, base.error))
    wanted = torch.where(expanded, torch.where(boosted, width - 1, width - 1 - pad), -1)
    moments = None
    if plan.histogram is not None:
        moments = torch.where(column, _moments(plan, "boost"),
                              torch.nn.functional.pad(_moments(plan, "base"), (0, pad)))
    return fit, wanted, moments


def release_orders(plan: LayerPlan, expanded: torch.Tensor, boosted: torch.Tensor | None
                   ) -> tuple[ChannelFit, torch.Tensor]:
    """(fit, orders) of one unit as released: wanted orders capped by the padding criterion.

    orders[j] = -1 for a plaintext channel (not expanded, or whose constant term would be padding);
    terms above orders[j] are never released (`packager.maths.padding.release_orders`).
    """
    fit, wanted, moments = release_fits(plan, expanded, boosted)
    if moments is None or plan.out_energy is None:  # no statistics to judge by: nothing is capped
        return fit, wanted
    energies = fit.coefficients.double().pow(2) * moments * plan.out_weight.double().pow(2).unsqueeze(-1)
    return fit, padding.release_orders(energies, wanted, plan.out_energy)


def select_channels(plans: list[LayerPlan], coverage: float, fit: str) -> list[torch.Tensor]:
    """Boolean masks of expanded channels per layer.

    `taylor` follows the paper: per layer, the channels with the narrowest calibrated ranges.
    `weighted` ranks all channels of the model together by expected output error, keeping in
    plaintext those whose series would cost the most.
    """
    if fit == "taylor":
        masks = []
        for plan in plans:
            count = int(round(coverage * plan.width.numel()))
            mask = torch.zeros(plan.width.numel(), dtype=torch.bool)
            mask[torch.argsort(plan.width, stable=True)[:count]] = True
            masks.append(mask)
        return masks
    # With order allocation a channel is judged at the best order it could get.
    scores = torch.cat([plan.score if plan.boost_score is None else torch.minimum(plan.score, plan.boost_score)
                        for plan in plans])
    count = int(round(coverage * scores.numel()))
    chosen = torch.zeros(scores.numel(), dtype=torch.bool)
    chosen[torch.argsort(scores, stable=True)[:count]] = True
    return list(torch.split(chosen, [plan.score.numel() for plan in plans]))


def boost_channels(plans: list[LayerPlan], masks: list[torch.Tensor], order: int) -> list[torch.Tensor] | None:
    """Which expanded channels get the boost order (2N, the others N-1), or None for a uniform order N.

    The B boosted channels are those whose error the boost reduces the most, model-wide, with B set so
    the coefficient columns equal a uniform order N's: (E - B) N + B (2N + 1) = E (N + 1), i.e.
    B = E / (N + 1) for E expanded channels. The allocation is used only where its expected output
    error (sum of squared channel scores) is below the uniform order's; heavy-tailed models (real
    LLMs, whose few wide channels dominate the error) gain, uniformly wide ones do not.
    """
    if plans[0].boost is None:
        return None
    expanded = torch.cat(masks)
    base = torch.cat([plan.base_score for plan in plans])
    boost = torch.cat([plan.boost_score for plan in plans])
    uniform = torch.cat([plan.score for plan in plans])
    count = int(round(int(expanded.sum()) / (order + 1)))
    gain = torch.where(expanded, base - boost, torch.full_like(base, -torch.inf))
    chosen = torch.zeros_like(expanded)
    chosen[torch.argsort(gain, descending=True, stable=True)[:count]] = True
    chosen &= expanded
    allocated = torch.where(chosen, boost, base)[expanded].pow(2).sum()
    if allocated >= uniform[expanded].pow(2).sum():
        return None
    return list(torch.split(chosen, [mask.numel() for mask in masks]))


def layer_generator(secret: bytes, layer: int, group: int | None = None) -> torch.Generator:
    """A torch.Generator for one layer (and channel group), derived from the release secret (HMAC-SHA256)."""
    label = f"unswift/layer/{layer}" + ("" if group is None else f"/group/{group}")
    digest = hmac.new(secret, label.encode(), hashlib.sha256).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def secret_id(secret: bytes) -> str:
    """A public identifier of the secret (HMAC of a constant): matches secrets, reveals nothing."""
    return hmac.new(secret, b"unswift/secret-id", hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True)
class SourceMLP:
    """One source MLP (any float dtype): gate (or fc1) rows, optional up rows, down matrix, optional biases."""

    gate: torch.Tensor  # [I, H]
    down: torch.Tensor  # [H, I]
    up: torch.Tensor | None = None
    gate_bias: torch.Tensor | None = None
    up_bias: torch.Tensor | None = None
    down_bias: torch.Tensor | None = None


@dataclass(frozen=True)
class ChannelGroup:
    """Channels released one after the other: expanded with one series order, or plaintext.

    `index` holds the source channel of each released channel, in release order (secretly permuted).
    For an expanded group the per-channel parameters (float64) are the gate row's factor s/h, the
    centre z0 it subtracts, the up row's scale a, and the coefficients with the parity of s applied
    (Θ's row factor 1/a included); they are all `None` for a plaintext group.
    """

    index: torch.Tensor
    gate_factor: torch.Tensor | None = None
    centre: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    coefficients: torch.Tensor | None = None  # [S, N+1] = c_n s^n / a

    @property
    def expanded(self) -> bool:
        return self.coefficients is not None

    @property
    def columns(self) -> int:
        """Θ columns the group occupies."""
        count = self.index.numel()
        return count * self.coefficients.shape[-1] if self.expanded else count


def channel_groups(fit: ChannelFit, expanded: torch.Tensor, hardening: Hardening, generator: torch.Generator,
                   *, gated: bool) -> tuple[ChannelGroup, ChannelGroup]:
    """The expanded and plaintext groups of one unit: every secret draw of the transform, nothing of size H.

    Draws happen in a fixed order (signs, scales, two permutations, window), so a given secret always
    gives the same release; `assemble` turns the groups into tensors.
    """
    intermediate = expanded.numel()
    idx_exp = torch.nonzero(expanded).flatten()
    idx_plain = torch.nonzero(~expanded).flatten()
    signs = torch.where(torch.rand(intermediate, generator=generator) < 0.5, -1.0, 1.0).double()
    scales = _secret_scales(torch.rand(intermediate, generator=generator).double())
    perm_exp = torch.randperm(idx_exp.numel(), generator=generator)
    perm_plain = torch.randperm(idx_plain.numel(), generator=generator)
    window_draws = torch.rand(2, intermediate, generator=generator).double() if hardening.window > 0 else None
    if not hardening.signs:
        signs = torch.ones_like(signs)
    if not (hardening.scales and gated):
        scales = torch.ones_like(scales)
    if hardening.permutation:
        idx_exp, idx_plain = idx_exp[perm_exp], idx_plain[perm_plain]

    s, a = signs[idx_exp], scales[idx_exp]
    z0, h = fit.centre[idx_exp].double(), fit.half_width[idx_exp].double()
    coefficients = fit.coefficients[idx_exp].double()
    if window_draws is not None:
        stretch = 1.0 + hardening.window * (0.5 + 0.5 * window_draws[0][idx_exp])
        shift = (stretch - 1.0) * (2.0 * window_draws[1][idx_exp] - 1.0)
        coefficients = _rewindow(coefficients, shift, stretch, fit.basis)
        z0, h = z0 + shift * h, h * stretch
    n = torch.arange(coefficients.shape[-1], dtype=torch.float64)
    coefficients = coefficients * s.unsqueeze(-1).pow(n) / a.unsqueeze(-1)  # parity: B_n(-t) = (-1)^n B_n(t)
    return ChannelGroup(idx_exp, s / h, z0, a, coefficients), ChannelGroup(idx_plain)


class OutputBuffers:
    """Memory `assemble` writes its two large tensors into, reused from one unit to the next.

    A fresh 400 MB tensor per unit costs page faults and, with the page cache full of the release
    being written, page reclaim on every fault; reusing two sets (one being written out while the next
    unit is assembled into the other) removes both.
    """

    def __init__(self) -> None:
        self.flat: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        count = 1
        for size in shape:
            count *= size
        buffer = self.flat.get(name)
        if buffer is None or buffer.numel() < count or buffer.dtype != dtype:
            buffer = self.flat[name] = torch.empty(count, dtype=dtype)
        return buffer[:count].view(shape)


def assemble(source: SourceMLP, groups: list[ChannelGroup], dtype: torch.dtype = torch.float64,
             buffers: OutputBuffers | None = None) -> dict[str, torch.Tensor]:
    """The release tensors of one unit (`in_proj.weight`, `in_proj.bias`, `theta`, `out_bias`) in `dtype`.

    Groups are laid out in order: gate rows of every group, then up rows, and Θ's columns (docs/FORMAT.md).
    Every row and column is written in place: Θ group by group as one broadcast product of the selected
    down columns and the coefficients (no [H, S, N+1] temporary). Below float64 the products are taken
    in float32 (one rounding of a source weight times a float64-derived factor) and stored in `dtype`.
    With `buffers`, in_proj.weight and Θ are views into them (valid until the buffers are reused).
    """
    work = torch.float64 if dtype == torch.float64 else torch.float32
    intermediate, hidden_in = source.gate.shape
    hidden = source.down.shape[0]
    halves = [(source.gate, source.gate_bias, True)]
    if source.up is not None:
        halves.append((source.up, source.up_bias, False))

    def empty(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return buffers.get(name, shape, dtype) if buffers is not None else torch.empty(shape, dtype=dtype)

    weight = empty("in_proj.weight", (intermediate * len(halves), hidden_in))
    bias = torch.zeros(intermediate * len(halves), dtype=torch.float64)  # small: float64, one rounding
    start = 0
    for matrix, matrix_bias, gate in halves:
        for group in groups:
            rows = slice(start, start + group.index.numel())
            start = rows.stop
            picked = matrix.index_select(0, group.index)
            if matrix_bias is not None:
                bias[rows] = matrix_bias[group.index].double()
            if not group.expanded:
                weight[rows] = picked
                continue
            factor = (group.gate_factor if gate else group.scale).to(work)
            weight[rows] = picked.to(work).mul_(factor.unsqueeze(-1))  # one rounding into `dtype`
            if gate:
                bias[rows] = (bias[rows] - group.centre) * group.gate_factor
            else:
                bias[rows] *= group.scale
    theta = empty("theta", (hidden, sum(group.columns for group in groups)))
    start = 0
    for group in groups:
        columns = slice(start, start + group.columns)
        start = columns.stop
        picked = source.down.index_select(1, group.index)
        if group.expanded:
            block = theta[:, columns].view(hidden, group.index.numel(), group.coefficients.shape[-1])
            torch.mul(picked.to(work).unsqueeze(-1), group.coefficients.to(work).unsqueeze(0), out=block)
        else:
            theta[:, columns] = picked
    tensors = {"in_proj.weight": weight, "in_proj.bias": bias.to(dtype), "theta": theta}
    if source.down_bias is not None:
        tensors["out_bias"] = source.down_bias.to(dtype)
    return tensors


def build_layer(source: SourceMLP, fit: ChannelFit, expanded: torch.Tensor, hardening: Hardening,
                generator: torch.Generator, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """The release tensors of one MLP with one series order for every expanded channel (see `assemble`)."""
    return assemble(source, list(channel_groups(fit, expanded, hardening, generator,
                                                gated=source.up is not None)), dtype)


def unit_groups(plan: LayerPlan, expanded: torch.Tensor, boosted: torch.Tensor | None, hardening: Hardening,
                secret: bytes, unit: int, *, gated: bool) -> list[ChannelGroup]:
    """The channel groups of one unit in release order, orders capped by the padding criterion."""
    fit, orders = release_orders(plan, expanded, boosted)
    return groups_for(fit, orders, hardening, secret, unit, gated=gated)


def truncated(fit: ChannelFit, order: int) -> ChannelFit:
    """The fit's series cut after term `order`."""
    return replace(fit, coefficients=fit.coefficients[:, : order + 1])


def groups_for(fit: ChannelFit, orders: torch.Tensor, hardening: Hardening, secret: bytes, unit: int, *,
               gated: bool) -> list[ChannelGroup]:
    """The channel groups of one unit in release order, from each channel's order (-1: plaintext).

    One order: the expanded channels, then the plaintext ones (one generator). Several: one group per
    order, ascending, then plaintext, each group with its own generator (the boost allocation's base and
    boost groups are groups 0 and 1).
    """
    distinct = sorted(set(int(o) for o in orders.tolist() if o >= 0))
    expanded = orders >= 0
    if len(distinct) <= 1:
        order = distinct[0] if distinct else 0
        return list(channel_groups(truncated(fit, order), expanded, hardening, layer_generator(secret, unit),
                                   gated=gated))
    groups = [channel_groups(truncated(fit, order), orders == order, hardening,
                             layer_generator(secret, unit, k), gated=gated)[0] for k, order in enumerate(distinct)]
    _, plain = channel_groups(fit, expanded, hardening, layer_generator(secret, unit, len(distinct)), gated=gated)
    return [*groups, plain]


def _secret_scales(uniform: torch.Tensor) -> torch.Tensor:
    """Log-uniform scales in SCALE_RANGE outside SCALE_EXCLUDED, one per uniform draw in [0, 1)."""
    log_lo, log_hi = torch.log(torch.tensor(SCALE_RANGE, dtype=torch.float64))
    gap_lo, gap_hi = torch.log(torch.tensor(SCALE_EXCLUDED, dtype=torch.float64))
    below, above = gap_lo - log_lo, log_hi - gap_hi
    position = uniform * (below + above)  # length along the two allowed stretches of log a
    return torch.exp(torch.where(position < below, log_lo + position, gap_hi + position - below))


def _rewindow(coefficients: torch.Tensor, shift: torch.Tensor, stretch: torch.Tensor, basis: str
              ) -> torch.Tensor:
    """Coefficients of q(t') = p(shift + stretch t') in the same basis (exact for polynomials)."""
    from packager.maths.series import bases

    order = coefficients.shape[-1] - 1
    count = 2 * (order + 1)
    nodes = torch.cos(torch.pi * (torch.arange(count, dtype=torch.float64) + 0.5) / count)
    points = shift.unsqueeze(-1) + stretch.unsqueeze(-1) * nodes  # [S, M] in the fit's variable
    values = bases.evaluate(coefficients, points, basis, "none")  # [S, M]
    design = bases.design(nodes, order, basis, "none")  # [M, N+1]
    return torch.linalg.lstsq(design, values.T).solution.T
