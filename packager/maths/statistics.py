"""Per-channel statistics of one MLP unit's pre-activations: what the series fits are computed from.

Gathered by `packager.stages.calibrate`, stored by `packager.formats.stats`; plain tensors here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from packager.maths.series.fit import Histogram


@dataclass(frozen=True)
class LayerStats:
    """Statistics of one MLP unit's gate pre-activations g (and up projections u), one entry per channel.

    A unit is a dense layer's MLP, a routed expert or a shared expert (`Adapter.units`); `Stats.layers`
    holds one entry per unit, in that order (for dense models, one per layer).
    """

    min: torch.Tensor
    max: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    up_rms: torch.Tensor
    counts: torch.Tensor  # [channels, bins] over [min, max]
    #: The unit's output energy over the calibration tokens (float64, [2]): mean and median over tokens
    #: of ||y||^2, y the MLP's output. None: not recorded (routed experts; statistics files from unswift
    #: before 0.x), in which case `output_energy` estimates it (see there).
    out_energy: torch.Tensor | None = None

    @property
    def histogram(self) -> Histogram:
        return Histogram(self.min.double(), self.max.double(), self.counts.double())
