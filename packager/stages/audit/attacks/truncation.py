"""The truncation attack's arithmetic: drop, per channel, the trailing Θ terms whose absence nobody sees.

What the attacker holds: the release (Θ, in_proj, config) and text of its own; not the source, not the
secret, no knowledge of the fit. It keeps, per expanded channel j, the terms 0..m_j of its series
(m_j = -1 drops the channel: its Θ columns and in_proj rows), and may drop a plaintext channel.
`packager.stages.audit.truncation` searches the m_j on the attacker's text and measures what remains;
this module holds the tensors-in, tensors-out parts:

1. `factor`: every expanded channel's Θ block [H, N+1] is rank 1 up to the storage rounding
   (Θ_j = v_j ⊗ c_j: the down column times the coefficients), so the channel is the scalar series
   p_j(t) = Σ_n c_{j,n} B_n(t) times v_j. The attacker evaluates it by Clenshaw (`chebyshev`), at the
   cost of the source, not (N+1) times it; truncating is zeroing c_{j,n} for n > m_j.
2. `tail_energies`: e_j(m) = |v_j|² E[(Σ_{n>m} c_{j,n} B_n(t_j))² u'_j²] on the attacker's inputs
   (exact on that text, float64); `plain_energies` the same for a whole plaintext channel.
3. `select`: for a multiplier λ, m_j = argmin_m cost(m) + e_j(m) / (λ Y), cost = the Θ columns and
   in_proj rows kept, Y the unit's median-token ||y||² (a few tokens with massive activations make the
   mean 100-1000 times the typical token's in some units of real models). The Lagrangian of "fewest
   bytes for a given added output energy".
4. `group_up`: kept orders rounded *up* into a few distinct values (the runtime builds features group
   by group and a group costs time); rounding up only adds terms back.
5. `truncate`: the unit's tensors with the truncation applied, channels regrouped by kept order; every
   kept element is a copy of the release's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from packager.maths.series import bases
from packager.stages.audit.attacks import ReleasedMLP

NAME = "truncation"
#: Per-token input chunk of the float64 energy passes.
CHUNK = 256


@dataclass
class Factors:
    """One unit as the attacker reads it: rank-1 factors of each expanded channel, plaintext columns."""

    groups: list[tuple[int, int]]  # (channels, order), release order
    coefficients: list[torch.Tensor]  # per group [count, order+1] (unit norm, sign fixed)
    vectors: torch.Tensor  # [H, S] the v_j of the expanded channels, release order
    plain: torch.Tensor  # [H, P]
    rank1_residual: float  # max over channels of sigma_2 / sigma_1

    @property
    def expanded(self) -> int:
        return sum(count for count, _ in self.groups)

    @property
    def orders(self) -> torch.Tensor:
        """Each expanded channel's shipped order, release order."""
        return torch.cat([torch.full((c,), o) for c, o in self.groups]) if self.groups else torch.zeros(
            0, dtype=torch.long)


def factor(mlp: ReleasedMLP) -> Factors:
    """Split Θ's expanded blocks into v_j ⊗ c_j by their dominant singular pair (float64)."""
    theta = mlp.theta.double()
    hidden = theta.shape[0]
    coefficients, vectors, worst, column = [], [], 0.0, 0
    for count, order in mlp.channel_groups:
        width = order + 1
        block = theta[:, column:column + count * width].reshape(hidden, count, width).permute(1, 0, 2)
        values, vecs = torch.linalg.eigh(block.transpose(1, 2) @ block)  # [count, N+1, N+1]
        q = vecs[..., -1]
        q = q * torch.where(q[:, 0] < 0, -1.0, 1.0).unsqueeze(-1).to(q.dtype)
        vectors.append(torch.einsum("chn,cn->hc", block, q))
        if width > 1:
            ratio = (values[..., -2].clamp(min=0) / values[..., -1].clamp(min=1e-300)).sqrt()
            worst = max(worst, float(ratio.max()) if ratio.numel() else 0.0)
        coefficients.append(q)
        column += count * width
    return Factors(list(mlp.channel_groups), coefficients,
                   torch.cat(vectors, 1) if vectors else theta[:, :0].clone(), theta[:, column:].clone(), worst)


def chebyshev(coefficients: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Σ_n c_n T_n(t) with linear continuation beyond ±1 (the release's basis), by Clenshaw.

    coefficients [S, N+1], t [T, S] -> [T, S] in t's dtype.
    """
    c = coefficients.to(t.dtype)
    order = c.shape[-1] - 1
    s = t.clamp(-1.0, 1.0)
    b1, b2 = torch.zeros_like(s), torch.zeros_like(s)
    two_s = 2.0 * s
    for k in range(order, 0, -1):
        b1, b2 = torch.addcmul(c[:, k] - b2, two_s, b1), b1
    value = c[:, 0] + s * b1 - b2
    n = torch.arange(order + 1, dtype=t.dtype)
    slope_up = (c * n * n).sum(-1)  # T_n'(1) = n², T_n'(-1) = (-1)^(n+1) n²
    slope_down = (c * n * n * (2 * (n % 2) - 1)).sum(-1)
    beyond = t - s
    return value + beyond * torch.where(beyond > 0, slope_up, slope_down)


def tail_energies(mlp: ReleasedMLP, factors: Factors, inputs: torch.Tensor) -> torch.Tensor:
    """e_j(m) for m = -1..N_j at column m+1, [S, N_max+2] (float64); entries past a channel's order are 0."""
    widest = max((o for _, o in factors.groups), default=0)
    out = torch.zeros(factors.expanded, widest + 2, dtype=torch.float64)
    norms = factors.vectors.pow(2).sum(0)
    start = 0
    for (count, order), c in zip(factors.groups, factors.coefficients, strict=True):
        acc = torch.zeros(count, order + 2, dtype=torch.float64)
        gate_w = mlp.in_weight[start:start + count].double()
        gate_b = mlp.in_bias[start:start + count].double()
        up = slice(mlp.intermediate + start, mlp.intermediate + start + count)
        up_w, up_b = mlp.in_weight[up].double(), mlp.in_bias[up].double()
        for x in inputs.split(CHUNK):
            x = x.double()
            t = x @ gate_w.T + gate_b
            terms = bases.design(t, order, mlp.basis, mlp.extrapolation) * c  # [T, count, N+1]
            tails = terms.flip(-1).cumsum(-1).flip(-1)  # [..., n] = Σ_{k >= n}
            tails = torch.cat([tails, torch.zeros_like(tails[..., :1])], -1)  # column m+1 -> Σ_{k > m}
            if mlp.gated:
                tails = tails * (x @ up_w.T + up_b).unsqueeze(-1)
            acc += tails.pow(2).sum(0)
        out[start:start + count, :order + 2] = acc / max(inputs.shape[0], 1) * norms[start:start + count, None]
        start += count
    return out


def plain_energies(mlp: ReleasedMLP, factors: Factors, inputs: torch.Tensor) -> torch.Tensor:
    """E||w_k act(g_k) u_k||² of each plaintext channel (what dropping it costs), float64."""
    s, inter = factors.expanded, mlp.intermediate
    acc = torch.zeros(inter - s, dtype=torch.float64)
    gate_w, gate_b = mlp.in_weight[s:inter].double(), mlp.in_bias[s:inter].double()
    up_w, up_b = mlp.in_weight[inter + s:].double(), mlp.in_bias[inter + s:].double()
    for x in inputs.split(CHUNK):
        x = x.double()
        h = mlp.activation.value(x @ gate_w.T + gate_b)
        if mlp.gated:
            h = h * (x @ up_w.T + up_b)
        acc += h.pow(2).sum(0)
    return acc / max(inputs.shape[0], 1) * factors.plain.pow(2).sum(0)


def select(tails: torch.Tensor, orders: torch.Tensor, scale: float, lam: float, rows: int) -> torch.Tensor:
    """m_j = argmin_m cost(m) + e_j(m) / (λ scale), m = -1..N_j; cost(m) = m + 1 + rows (0 for m = -1)."""
    m = torch.arange(-1, tails.shape[-1] - 1)
    cost = torch.where(m < 0, 0.0, m + 1.0 + rows).double()
    objective = cost + tails / (lam * scale)
    objective = torch.where(m.unsqueeze(0) <= orders.unsqueeze(-1), objective, torch.inf)
    return objective.argmin(-1) - 1


def group_up(keep: torch.Tensor, cap: torch.Tensor, *, groups: int, group_cost: float) -> torch.Tensor:
    """Kept orders rounded up into at most `groups` distinct values (dynamic programme), never above `cap`.

    Minimises columns + group_cost x (number of groups). A channel the chosen values leave without a
    place at or below its cap keeps its cap. Dropped channels (-1) stay dropped.
    """
    alive = keep[keep >= 0]
    if alive.numel() == 0:
        return keep.clone()
    values, counts = torch.unique(alive, return_counts=True)
    v, cnt = values.tolist(), counts.tolist()
    k = len(v)
    prefix = [0]
    for c in cnt:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    best = [[inf] * (k + 1) for _ in range(groups + 1)]
    back = [[-1] * (k + 1) for _ in range(groups + 1)]
    best[0][0] = 0.0
    for g in range(1, groups + 1):
        for j in range(1, k + 1):
            for i in range(j):
                if best[g - 1][i] < inf:
                    cost = best[g - 1][i] + (prefix[j] - prefix[i]) * (v[j - 1] + 1)
                    if cost < best[g][j]:
                        best[g][j], back[g][j] = cost, i
    g = min(range(1, groups + 1), key=lambda g: best[g][k] + g * group_cost)
    tops, j = [], k
    while j > 0:
        tops.append(v[j - 1])
        j, g = back[g][j], g - 1
    tops_t = torch.tensor(sorted(tops), dtype=keep.dtype)
    index = torch.searchsorted(tops_t, keep.clamp(min=0)).clamp(max=len(tops) - 1)
    rounded = torch.minimum(tops_t[index], cap)
    return torch.where(keep < 0, keep, rounded)


def kept_columns(factors: Factors, keep: torch.Tensor, plain_keep: torch.Tensor) -> tuple[int, int]:
    """(Θ columns kept, Θ columns shipped) of one unit."""
    total = sum(c * (o + 1) for c, o in factors.groups) + factors.plain.shape[1]
    return int((keep + 1).clamp(min=0).sum()) + int(plain_keep.sum()), total


def truncate(mlp: ReleasedMLP, keep: torch.Tensor, plain_keep: torch.Tensor
             ) -> tuple[dict[str, torch.Tensor], dict]:
    """One unit's release tensors with the truncation applied, and its `layers` entry.

    Kept expanded channels are regrouped by kept order (ascending), each keeping its first m_j + 1
    columns; dropped channels lose their in_proj rows and columns. Tensors keep the release's dtype
    (pass them in the dtype wanted); no arithmetic, every kept element is a copy.
    """
    theta, weight, bias = mlp.theta, mlp.in_weight, mlp.in_bias
    first_col, order_of, column = [], [], 0
    for count, order in mlp.channel_groups:
        for j in range(count):
            first_col.append(column + j * (order + 1))
            order_of.append(order)
        column += count * (order + 1)
    expanded = len(first_col)
    if any(int(k) > order_of[j] for j, k in enumerate(keep.tolist())):
        raise ValueError("a kept order exceeds the terms its channel ships")
    groups, rows, cols = [], [], []
    for order in sorted(set(int(k) for k in keep.tolist() if k >= 0)):
        members = torch.nonzero(keep == order).flatten().tolist()
        groups.append({"channels": len(members), "order": order})
        for j in members:
            rows.append(j)
            cols.extend(range(first_col[j], first_col[j] + order + 1))
    kept_plain = torch.nonzero(plain_keep).flatten()
    cols.extend((kept_plain + column).tolist())
    channel_rows = torch.tensor(rows + (kept_plain + expanded).tolist(), dtype=torch.long)
    all_rows = torch.cat([channel_rows, channel_rows + mlp.intermediate]) if mlp.gated else channel_rows
    out = {"in_proj.weight": weight.index_select(0, all_rows).contiguous(),
           "in_proj.bias": bias.index_select(0, all_rows).contiguous(),
           "theta": theta.index_select(1, torch.tensor(cols, dtype=torch.long)).contiguous()}
    if mlp.out_bias is not None:
        out["out_bias"] = mlp.out_bias
    entry = {"intermediate": len(rows) + int(kept_plain.numel()), "expanded": len(rows), "groups": groups}
    return out, entry
