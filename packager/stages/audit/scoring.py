"""Scoring recovered weights against the source: which elements of the protected MLP weights came back.

The protected elements of a unit are the gate rows, up rows and down columns of its expanded channels
(`expanded_source_channels` finds which source channels those are). An element counts as recovered
when it is within `TOLERANCE` relative error of the original, after aligning each source channel with
the recovered channel whose gate row points the same way: an attacker need not align (MLP channels
are permutation-invariant), so the score must not ask it to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from packager.stages.audit.attacks import RecoveredMLP, ReleasedMLP

if TYPE_CHECKING:  # a type only: importing it pulls in transformers
    from packager.maths.transform import SourceMLP

#: An element is recovered when |recovered - original| <= TOLERANCE * |original|.
TOLERANCE = 0.01


@dataclass
class Tally:
    """Running counts over the protected elements of every attacked unit."""

    elements: int = 0
    within: int = 0
    within_up_to_scale: int = 0
    error_sq: float = 0.0
    norm_sq: float = 0.0

    def add(self, recovered: torch.Tensor, original: torch.Tensor, *,
            scaled: torch.Tensor | None = None) -> None:
        """Count `recovered` against `original`; `scaled` is `recovered` with the channel scale removed."""
        self.elements += original.numel()
        self.within += int(((recovered - original).abs() <= TOLERANCE * original.abs()).sum())
        other = recovered if scaled is None else scaled
        self.within_up_to_scale += int(((other - original).abs() <= TOLERANCE * original.abs()).sum())
        self.error_sq += float((recovered - original).pow(2).sum())
        self.norm_sq += float(original.pow(2).sum())

    @property
    def fraction(self) -> float | None:
        return self.within / self.elements if self.elements else None

    @property
    def fraction_up_to_scale(self) -> float | None:
        return self.within_up_to_scale / self.elements if self.elements else None

    @property
    def relative_error(self) -> float | None:
        return (self.error_sq / self.norm_sq) ** 0.5 if self.norm_sq > 0 else None


def _unit_rows(rows: torch.Tensor) -> torch.Tensor:
    return rows / rows.norm(dim=-1, keepdim=True).clamp(min=1e-300)


def expanded_source_channels(released: ReleasedMLP, source_gate: torch.Tensor) -> torch.Tensor:
    """Source channel of each released expanded channel: released gate rows are scaled source rows."""
    cos = _unit_rows(released.gate_rows[: released.expanded]) @ _unit_rows(source_gate.double()).T
    return cos.abs().argmax(-1)


def score_unit(tally: Tally, recovered: RecoveredMLP, source: SourceMLP, protected: torch.Tensor) -> None:
    """Add one unit's protected elements to the tally, each source channel aligned to its best match.

    The per-channel scale a (up row times a, down column over a) leaves the MLP's function unchanged;
    `within_up_to_scale` counts elements after removing the best such scale per channel.
    """
    if protected.numel() == 0:
        return
    original_gate = source.gate.double()[protected]
    cos = _unit_rows(original_gate) @ _unit_rows(recovered.gate.double()).T  # [P, I']
    match = cos.abs().argmax(-1)
    gate = recovered.gate.double()[match]
    tally.add(gate, original_gate)
    down = recovered.down.double()[:, match]
    original_down = source.down.double()[:, protected]
    if recovered.up is not None and source.up is not None:
        up = recovered.up.double()[match]
        original_up = source.up.double()[protected]
        scale = (up * original_up).sum(-1) / original_up.pow(2).sum(-1).clamp(min=1e-300)
        scale = torch.where(scale.abs() > 1e-12, scale, torch.ones_like(scale))
        tally.add(up, original_up, scaled=up / scale.unsqueeze(-1))
        tally.add(down, original_down, scaled=down * scale.unsqueeze(0))
    else:
        tally.add(down, original_down)
