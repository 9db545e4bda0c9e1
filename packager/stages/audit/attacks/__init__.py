"""Attacks on a TaylorMLP release, one module each: pure tensors in, recovered plain-MLP weights out.

Each attack sees only what an attacker holds: the released tensors of one MLP and the public part of
`config.json["unswift"]` (order, basis, fit method, activation). None of them reads the source
checkpoint or the secret; `packager.stages.audit` compares their output with the source afterwards.

- `coefficient_ratio`: the published closed-form attack (TaylorAttack), as published.
- `kerckhoffs`: an attacker who knows unswift's fitting method and hardening scheme, not the secret.
- `learning`: fitting a plain MLP to input/output pairs of the released MLP, under a compute budget.
- `truncation`: not a recovery: dropping the trailing series terms nobody can see, to measure how much
  of the slowdown survives an attacker who does not rebuild the weights (`packager.stages.audit.truncation`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from packager.maths.series.activations import Activation

ATTACK_NAMES = ("coefficient_ratio", "kerckhoffs", "learning", "truncation")


@dataclass(frozen=True)
class ReleasedMLP:
    """One released MLP as stored in the release (float64), plus the public transform parameters."""

    in_weight: torch.Tensor  # [I, H] (non-gated) or [2I, H]: gate rows, then up rows
    in_bias: torch.Tensor  # same first dimension
    theta: torch.Tensor  # [H, S(N+1) + P]
    out_bias: torch.Tensor | None
    intermediate: int  # I
    expanded: int  # S
    order: int  # N
    basis: str
    extrapolation: str
    fit: str  # "weighted" or "taylor"
    activation: Activation
    gated: bool
    #: (channels, order) of each group of expanded channels, in release order (order allocation);
    #: empty: one group of `order`. The closed-form attacks run on one group at a time (`by_group`).
    groups: tuple[tuple[int, int], ...] = ()

    @property
    def channel_groups(self) -> tuple[tuple[int, int], ...]:
        return tuple(g for g in (self.groups or ((self.expanded, self.order),)) if g[0] > 0)

    @property
    def gate_rows(self) -> torch.Tensor:
        return self.in_weight[: self.intermediate]

    @property
    def gate_bias(self) -> torch.Tensor:
        return self.in_bias[: self.intermediate]

    @property
    def up_rows(self) -> torch.Tensor | None:
        return self.in_weight[self.intermediate :] if self.gated else None

    @property
    def up_bias(self) -> torch.Tensor | None:
        return self.in_bias[self.intermediate :] if self.gated else None

    @property
    def blocks(self) -> torch.Tensor:
        """Θ of the expanded channels as [S, H, N+1]: block j is Θ_{j,0..N} (one order only)."""
        if len(self.channel_groups) > 1:
            raise ValueError("channels of several orders: attack each of `group_views()`")
        hidden, width = self.theta.shape[0], self.order + 1
        return self.theta[:, : self.expanded * width].reshape(hidden, self.expanded, width).permute(1, 0, 2)

    @property
    def plain_down(self) -> torch.Tensor:
        """Down columns of the plaintext channels, [H, P]."""
        return self.theta[:, sum(count * (order + 1) for count, order in self.channel_groups) :]

    def group_views(self) -> list[ReleasedMLP]:
        """One MLP per channel group, each of a single order and without plaintext channels."""
        views, start, column = [], 0, 0
        for count, order in self.channel_groups:
            rows = [self.in_weight[start : start + count], self.in_bias[start : start + count]]
            if self.gated:
                up = slice(self.intermediate + start, self.intermediate + start + count)
                rows = [torch.cat([rows[0], self.in_weight[up]]), torch.cat([rows[1], self.in_bias[up]])]
            theta = self.theta[:, column : column + count * (order + 1)]
            views.append(replace(self, in_weight=rows[0], in_bias=rows[1], theta=theta, intermediate=count,
                                 expanded=count, order=order, groups=()))
            start, column = start + count, column + count * (order + 1)
        return views


@dataclass(frozen=True)
class RecoveredMLP:
    """A plain MLP an attacker rebuilt: y = down (act(gate x + gate_bias) * (up x + up_bias)) + down_bias.

    Channels are in the attacker's order (for the closed-form attacks: the release's, expanded first).
    """

    gate: torch.Tensor  # [I', H]
    down: torch.Tensor  # [H, I']
    up: torch.Tensor | None = None
    gate_bias: torch.Tensor | None = None
    up_bias: torch.Tensor | None = None
    down_bias: torch.Tensor | None = None
    extra: dict | None = None  # attack-specific diagnostics, JSON-serialisable

    def __call__(self, x: torch.Tensor, activation: Activation) -> torch.Tensor:
        g = x @ self.gate.T.to(x.dtype)
        if self.gate_bias is not None:
            g = g + self.gate_bias.to(x.dtype)
        hidden = activation.value(g)
        if self.up is not None:
            u = x @ self.up.T.to(x.dtype)
            if self.up_bias is not None:
                u = u + self.up_bias.to(x.dtype)
            hidden = hidden * u
        y = hidden @ self.down.T.to(x.dtype)
        return y + self.down_bias.to(x.dtype) if self.down_bias is not None else y


def with_plaintext(mlp: ReleasedMLP, gate: torch.Tensor, up: torch.Tensor | None, down: torch.Tensor,
                   gate_bias: torch.Tensor, extra: dict | None = None) -> RecoveredMLP:
    """Recovered expanded channels followed by the plaintext channels, copied as released."""
    s = mlp.expanded
    full_gate = torch.cat([gate, mlp.gate_rows[s:]])
    full_gate_bias = torch.cat([gate_bias, mlp.gate_bias[s:]])
    full_up = torch.cat([up, mlp.up_rows[s:]]) if up is not None else None
    full_down = torch.cat([down, mlp.plain_down], dim=1)
    up_bias = mlp.up_bias
    if up_bias is not None and up is not None and up_bias.abs().max() == 0:
        up_bias = None
    if full_gate_bias.abs().max() == 0:
        full_gate_bias = None
    return RecoveredMLP(gate=full_gate, down=full_down, up=full_up, gate_bias=full_gate_bias, up_bias=up_bias,
                        down_bias=mlp.out_bias, extra=extra)


def by_group(recover: Callable[[ReleasedMLP], RecoveredMLP], mlp: ReleasedMLP) -> RecoveredMLP:
    """Run a closed-form attack on each channel group of one order, then add the plaintext channels."""
    parts = [recover(view) for view in mlp.group_views()]
    hidden = mlp.theta.shape[0]
    empty = torch.zeros(0, hidden, dtype=torch.float64)
    gate = torch.cat([empty, *(p.gate for p in parts)])
    up = torch.cat([empty, *(p.up for p in parts)]) if mlp.gated else None
    down = torch.cat([empty.T, *(p.down for p in parts)], dim=1)
    gate_bias = torch.cat([torch.zeros(0, dtype=torch.float64),
                           *(p.gate_bias if p.gate_bias is not None else torch.zeros(p.gate.shape[0]) for p in parts)])
    return with_plaintext(mlp, gate, up, down, gate_bias.double(), merge_extras([p.extra for p in parts if p.extra]))


def merge_extras(extras: list[dict]) -> dict:
    """Diagnostics of several parts folded into one: max of `*_max`, median of the rest, else the first."""
    if not extras:
        return {}
    merged: dict = {}
    for key in extras[0]:
        values = [e.get(key) for e in extras if e.get(key) is not None]
        if not values or not isinstance(values[0], (int, float)) or len(set(values)) == 1:
            merged[key] = values[0] if values else None
        elif key.endswith("_max"):
            merged[key] = max(values)
        else:
            merged[key] = float(torch.tensor(values, dtype=torch.float64).median())
    return merged
