"""Padding: Θ columns that carry nothing, and the per-channel series orders a release may ship.

The criterion (docs/FORMAT.md, "No padding"). For an MLP unit U whose Θ has C_U columns, removing
column c (expanded channel j, term n; or a plaintext channel) changes the unit's output y(x) ∈ R^H by
δ_c(x) = Θ[:, c] φ_c(x), φ_c the feature Θ multiplies (B_n(t_j) u'_j; act(g) u for a plaintext channel).
The column is **padding** when

    Θ[:, c] == 0,   or   E||δ_c||² <= u² E||y||² / C_U,

expectations over the calibration distribution, u = 2^-24 the unit roundoff of float32 whatever the
release's storage dtype. u·RMS(y) is half an ulp of float32 for an output element of RMS size (the top
of its range); the 1/C_U share makes it a statement about the set: removing every padding column of a
unit at once moves its output by at most u·RMS(y) when the removed contributions add in quadrature
(measured on the demo model: within 11 %). Why float32 and not the storage dtype's rounding: the runtime
computes the features and accumulates Θ·φ in float32 for every dtype, and "below bfloat16 rounding" is
not "carries nothing": with bfloat16's roundoff the criterion flags 19-67 % of a default bfloat16
release's columns, and dropping them moves the model by three times bfloat16's own noise floor (issue
14's prototype, measured).

Two ways to evaluate it:
- `term_energies`: from calibration statistics, before a release exists. E||δ_{j,n}||² ≈ |w_j|² c_{j,n}²
  E_hist[B_n(t)²] up_rms_j², the histogram read as a piecewise-constant density and g, u taken as
  independent (measured on the demo against real inputs: ratio 0.86 / 1.01 / 1.17 at the 10th / 50th /
  90th percentile). `convert` keeps a term only when its estimate clears the threshold by `MARGIN`.
- `column_energies`: from the features of real inputs, exact (the release scan, `stages.audit.padding`).

Padding is what can be *dropped*: the release format stores each channel's terms 0..N contiguously, so
a column can be removed only with every column above it in its channel. The criterion therefore applies
to trailing columns: a column is padding when it is zero, or when it and every higher term of its
channel are below the threshold (a plaintext column is its channel's only one). A term inside a channel
that is below the threshold (a near-zero coefficient, typically of the parity a near-symmetric interval
gives silu - x/2) is reported by the scan as `inner_below`, not padding: dropping it needs a loader that
skips terms, and cutting the channel's order there instead costs the terms above it, which matter (on
the demo model, cutting at the first such term took top-1 from 0.998 to 0.945).

Per channel, the release ships terms 0..M_j, M_j the highest order whose term clears the threshold
(`last_orders`). A channel none of whose terms clears it is released in plaintext. The threshold's C_U
is the release's own column count, found as a fixed point (fewer columns raise the threshold, which can
only lower orders).
"""

from __future__ import annotations

import torch

from packager.maths.series import bases
from packager.maths.series.fit import ChannelFit, Histogram, gauss_grid

#: Unit roundoff of float32: the criterion's rounding whatever the storage dtype (see the module docstring).
UNIT_ROUNDOFF = 2.0**-24
#: `convert` keeps a term only when its estimated energy is above MARGIN times the threshold (the
#: statistics' estimate is within 0.86-1.17 of the truth for 80 % of the demo's terms; 4x in energy is 2x
#: in RMS), so that no released column meets the criterion on real inputs.
MARGIN = 4.0
#: Gauss-Legendre points per histogram bin when integrating over the calibrated density.
MOMENT_POINTS = 4
#: The runtime builds features group by group: a group of channels costs about as much time as this
#: many Θ columns (measured on the demo's shapes, one CPU thread, float32: ~64 µs per group and unit
#: against 0.128 µs per column). Groups of orders are merged when a group would cost more than it saves.
GROUP_COST_COLUMNS = 500.0
#: What a *release* charges per group when rounding its orders down: nothing. Rounding down removes terms
#: that carry something, so a release keeps as many as `MAX_GROUPS` groups allow (fidelity first: an
#: order allocation's boosted channels are not merged away, and `--slowdown` ships exactly the groups its
#: truncation search kept and timed). `GROUP_COST_COLUMNS` is what the truncation attacker, who wants
#: speed, charges when it rounds its kept orders *up*.
RELEASE_GROUP_COST = 0.0
#: At most this many distinct series orders per unit.
MAX_GROUPS = 8
#: Channels processed together when evaluating basis moments (bounds the [C, K, N+1] temporary).
_BLOCK = 64


def threshold(out_energy: float, columns: int) -> float:
    """E||δ||² at or below which a column is padding: u² E||y||² / C_U (the H of both RMS cancels)."""
    return float(out_energy) * UNIT_ROUNDOFF**2 / max(int(columns), 1)


def basis_moments(fit: ChannelFit, histogram: Histogram, points: int = MOMENT_POINTS) -> torch.Tensor:
    """E_hist[B_n(t)²] per channel and term, [C, N+1] (float64), t = (g - centre) / half_width."""
    g, mass = gauss_grid(histogram, points)
    order = fit.coefficients.shape[-1] - 1
    out = []
    for s in range(0, g.shape[0], _BLOCK):
        t = (g[s:s + _BLOCK] - fit.centre[s:s + _BLOCK, None]) / fit.half_width[s:s + _BLOCK, None]
        design = bases.design(t, order, fit.basis, fit.extrapolation)  # [c, K, N+1]
        out.append((design.pow(2) * mass[s:s + _BLOCK, :, None]).sum(1))
    return torch.cat(out) if out else torch.zeros(0, order + 1, dtype=torch.float64)


def term_energies(fit: ChannelFit, histogram: Histogram, weight: torch.Tensor) -> torch.Tensor:
    """Estimated E||δ_{j,n}||² per channel and term [C, N+1]; `weight` = |w_j| up_rms_j (|w_j| ungated)."""
    return fit.coefficients.double().pow(2) * basis_moments(fit, histogram) * weight.double().pow(2).unsqueeze(-1)


def diagonal_out_energy(activation, histogram: Histogram, weight: torch.Tensor) -> float:
    """Σ_j |w_j|² up_rms_j² E_hist[f(g)²]: the output energy without cross terms between channels.

    Only an estimate (0.38-0.97 of the measured energy on the demo model), used where calibration did not
    record the unit's output (routed experts, older statistics files).
    """
    g, mass = gauss_grid(histogram, 1)
    return float((activation.value(g).pow(2) * mass).sum(-1).mul(weight.double().pow(2)).sum())


def last_orders(energies: torch.Tensor, limit: float) -> torch.Tensor:
    """Per channel the highest n whose term has energy above `limit` (-1: no term does)."""
    n = torch.arange(energies.shape[-1])
    return torch.where(energies > limit, n, -1).max(-1).values


def trailing_padding(energies: torch.Tensor, limit: float, orders: torch.Tensor) -> torch.Tensor:
    """Boolean [C, N+1]: terms 0..orders[j] of channel j that lie above its last term over `limit`."""
    n = torch.arange(energies.shape[-1])
    return (n > last_orders(energies, limit).unsqueeze(-1)) & (n <= orders.unsqueeze(-1))


def group_down(caps: torch.Tensor, *, groups: int = MAX_GROUPS, group_cost: float = GROUP_COST_COLUMNS
               ) -> torch.Tensor:
    """Orders rounded *down* into at most `groups` distinct values, never above a channel's cap.

    Maximises the series columns kept minus `group_cost` per group (dynamic programme over the distinct
    caps), the lowest cap always among the chosen values so that no channel loses its expansion (only
    channels whose cap is already -1 are plaintext). Rounding down only removes terms: no padding can
    appear.
    """
    alive = caps[caps >= 0]
    if alive.numel() == 0:
        return caps.clone()
    values, counts = torch.unique(alive, return_counts=True)
    v, cnt = values.tolist(), counts.tolist()
    k = len(v)
    suffix = [0] * (k + 1)
    for i in range(k - 1, -1, -1):
        suffix[i] = suffix[i + 1] + cnt[i]
    inf = float("-inf")
    # best[g][j]: kept columns of the channels with caps below v_j, the g-th chosen value being v_j
    best = [[inf] * k for _ in range(groups + 1)]
    back = [[-1] * k for _ in range(groups + 1)]
    best[1][0] = 0.0  # the lowest chosen value is the lowest cap: no expanded channel falls to plaintext
    for g in range(2, groups + 1):
        for j in range(k):
            for i in range(j):
                if best[g - 1][i] == inf:
                    continue
                value = best[g - 1][i] + (suffix[i] - suffix[j]) * (v[i] + 1)
                if value > best[g][j]:
                    best[g][j], back[g][j] = value, i
    choice, score = None, 0.0  # nothing expanded: no columns, no group
    for g in range(1, groups + 1):
        for j in range(k):
            if best[g][j] == inf:
                continue
            total = best[g][j] + suffix[j] * (v[j] + 1) - g * group_cost
            if choice is None or total > score:
                choice, score = (g, j), total
    if choice is None:
        return torch.full_like(caps, -1)
    chosen, (g, j) = [], choice
    while j >= 0 and g >= 1:
        chosen.append(v[j])
        j, g = back[g][j], g - 1
    tops = torch.tensor(sorted(chosen), dtype=caps.dtype)
    index = torch.searchsorted(tops, caps, right=True) - 1  # the largest chosen value <= cap
    rounded = torch.where(index >= 0, tops[index.clamp(min=0)], torch.full_like(caps, -1))
    return torch.where(caps < 0, torch.full_like(caps, -1), rounded)


def columns_of(orders: torch.Tensor) -> int:
    """Θ columns of a unit whose channels have these orders (-1: plaintext, one column)."""
    return int((orders + 1).clamp(min=1).sum())


def release_orders(energies: torch.Tensor, wanted: torch.Tensor, out_energy: float, *, margin: float = MARGIN,
                   groups: int = MAX_GROUPS, group_cost: float = RELEASE_GROUP_COST) -> torch.Tensor:
    """The orders a unit is released with: `wanted` [C] (-1 plaintext) capped where terms stop mattering.

    `energies` [C, N+1] are the estimated term energies of each channel's fit (N >= max wanted). The cap
    is the padding-free order at `margin` times the threshold, the threshold's C_U the release's own
    column count (a fixed point: fewer columns raise it, so the loop only lowers orders and stops); the
    capped orders are grouped by `group_down`.
    """
    columns = columns_of(wanted)
    while True:
        limit = margin * threshold(out_energy, columns)
        orders = settled_orders(energies, wanted, limit, groups=groups, group_cost=group_cost)
        kept = columns_of(orders)
        if kept >= columns:
            return orders
        columns = kept


def capped_last_orders(energies: torch.Tensor, bound: torch.Tensor, limit: float) -> torch.Tensor:
    """Per channel the highest n <= bound[j] whose term has energy above `limit` (-1: none, or bound -1)."""
    n = torch.arange(energies.shape[-1])
    return last_orders(torch.where(n <= bound.unsqueeze(-1), energies, torch.zeros_like(energies)), limit)


def settled_orders(energies: torch.Tensor, wanted: torch.Tensor, limit: float, *, groups: int = MAX_GROUPS,
                   group_cost: float = RELEASE_GROUP_COST) -> torch.Tensor:
    """Grouped orders whose every channel's highest term clears `limit`.

    Rounding a channel down into a group can land its order on a term that is itself under the limit (a
    near-zero coefficient of the parity the interval favours): that term would then be trailing, i.e.
    padding. Each such channel is cut further to its highest term that clears the limit and the channels
    are grouped again, until nothing moves (orders only decrease, so this stops).
    """
    caps = capped_last_orders(energies, wanted, limit)
    while True:
        orders = group_down(caps, groups=groups, group_cost=group_cost)
        settled = capped_last_orders(energies, orders, limit)
        if torch.equal(settled, orders):
            return orders
        caps = settled


def column_energies(theta: torch.Tensor, feature_square_sum: torch.Tensor, tokens: int) -> torch.Tensor:
    """Exact E||δ_c||² per column from Θ [H, C] and the summed squares of its features over `tokens`."""
    return theta.double().pow(2).sum(0) * feature_square_sum.double() / max(tokens, 1)


def padding_columns(theta: torch.Tensor, energies: torch.Tensor, out_energy: float,
                    groups: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(zero, trailing, inner) boolean masks over Θ's columns for a unit laid out as `groups` of
    (channels, order) followed by plaintext columns: exact zeros, trailing columns under the threshold
    (padding), and non-trailing columns under it (reported, not padding: see the module docstring)."""
    zero = (theta == 0).all(0)
    limit = threshold(out_energy, theta.shape[1])
    below = energies <= limit
    trailing = torch.zeros_like(below)
    start = 0
    for count, order in groups:
        width = count * (order + 1)
        block = energies[start:start + width].view(count, order + 1)
        cut = trailing_padding(block, limit, torch.full((count,), order))
        trailing[start:start + width] = cut.flatten()
        start += width
    trailing[start:] = below[start:]
    return zero, trailing & ~zero, below & ~trailing & ~zero
