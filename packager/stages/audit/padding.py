"""The padding scan: every Θ column of a release judged by the padding criterion on real inputs.

`packager.maths.padding` states the criterion; `convert` applies it to calibration statistics before a
release exists. This scan checks a release folder alone: the release runs on calibration-like text
(sampled from the release itself with the calibration prompt set, as calibration samples from the
source), each unit's inputs are recorded, the runtime's own `features` give φ for every column, and
every column's E||δ_c||² = |Θ[:, c]|² E[φ_c²] and the unit's E||y||² are exact (float64). Padding is a
zero column or a trailing one under the threshold; inner columns under it are counted apart
(`packager.maths.padding` says why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from packager.maths import padding

#: Tokens of text the scan runs the release on (decisions are made at ratios far from 1).
SCAN_TOKENS = 1024
_CHUNK = 256


@dataclass
class UnitScan:
    """One unit's columns that meet the criterion."""

    unit: str
    columns: int
    zero: list[int] = field(default_factory=list)
    below: list[int] = field(default_factory=list)  # trailing columns under the threshold: padding
    inner: list[int] = field(default_factory=list)  # non-trailing columns under it: reported, not padding
    #: smallest E||δ_c||² / threshold over the channels' highest terms, and over the plaintext columns
    min_ratio_series: float | None = None
    min_ratio_plain: float | None = None

    @property
    def padding(self) -> int:
        return len(self.zero) + len(self.below)

    def to_json(self) -> dict:
        return {"unit": self.unit, "columns": self.columns, "padding": self.padding, "zero": len(self.zero),
                "below_rounding": len(self.below), "inner_below": len(self.inner),
                "min_ratio_series": self.min_ratio_series,
                "min_ratio_plain": self.min_ratio_plain}


@torch.no_grad()
def scan_unit(module, name: str, x: torch.Tensor) -> UnitScan:
    """Judge every Θ column of one runtime `TaylorMLP` given its inputs x [T, H]."""
    theta = module.theta.weight.detach().double()
    square = torch.zeros(theta.shape[1], dtype=torch.float64)
    out = 0.0
    for rows in x.split(_CHUNK):
        phi = module.features(rows.float()).double()
        square += phi.pow(2).sum(0)
        y = phi @ theta.T
        if module.theta.bias is not None:
            y = y + module.theta.bias.double()
        out += float(y.pow(2).sum())
    tokens = x.shape[0]
    energies = padding.column_energies(theta, square, tokens)
    out_energy = out / max(tokens, 1)
    zero, below, inner = padding.padding_columns(theta, energies, out_energy, module.groups)
    ratio = energies / max(padding.threshold(out_energy, theta.shape[1]), 1e-300)
    series = sum(count * (order + 1) for count, order in module.groups)
    last = torch.zeros(theta.shape[1], dtype=torch.bool)  # each channel's highest term (what a cut removes first)
    start = 0
    for count, order in module.groups:
        last[start + order:start + count * (order + 1):order + 1] = True
        start += count * (order + 1)
    last[series:] = True
    return UnitScan(name, theta.shape[1], torch.nonzero(zero).flatten().tolist(),
                    torch.nonzero(below).flatten().tolist(), torch.nonzero(inner).flatten().tolist(),
                    float(ratio[last & (torch.arange(theta.shape[1]) < series)].min()) if series else None,
                    float(ratio[series:].min()) if theta.shape[1] > series else None)


@torch.no_grad()
def scan_release(release_dir: str | Path, *, ids: torch.Tensor | None = None, model=None,
                 tokens: int = SCAN_TOKENS) -> list[UnitScan]:
    """Every unit's padding columns, the release run (float32) on `ids` (default: calibration-like text)."""
    from packager.formats.release import ReleaseFiles
    from packager.stages.audit.texts import capture_io
    from packager.stages.evaluate import load_release

    release = ReleaseFiles(Path(release_dir))
    if model is None:
        model = load_release(release.path, dtype=torch.float32)
    if ids is None:
        ids = calibration_like_ids(release, model, tokens)
    inputs = capture_io(model, release.units, ids, inputs=range(len(release.units)))
    return [scan_unit(model.get_submodule(unit), unit, inputs[i][0]) for i, unit in enumerate(release.units)]


def calibration_like_ids(release, model, tokens: int) -> torch.Tensor:
    """Text sampled from the release with the calibration prompt set (seed 0), as calibration samples it."""
    from packager.stages.audit.texts import _tokenizer
    from packager.stages.text import sample_text

    text = sample_text(model, _tokenizer(release), kind="calibration", tokens=tokens, seq_len=256, seed=0)
    return text.ids
