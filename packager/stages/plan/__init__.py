"""Planning: the series order, coverage and expanded channels a release gets, before anything is written.

    fits.py      fit every channel (the per-channel series and the error each would add)
    coverage.py  `--coverage auto`: the largest coverage whose measured top-1 agreement meets --min-top1
    slowdown.py  `--slowdown X`: coverage and per-channel orders whose slowdown after truncation is X
    measure.py   what those two measure on the source model in memory (decode time, fidelity)
    dry_run.py   `--dry-run`: the plan's figures from the checkpoint's headers alone

`resolve` is the one entry point conversion uses: it runs whichever choices the options leave open.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from packager.formats.checkpoint import Checkpoint
from packager.formats.stats import Stats
from packager.maths.transform import LayerPlan, select_channels
from packager.progress import Progress, reporter
from packager.stages.budget import Budget
from packager.stages.options import ConvertOptions

__all__ = ["Plan", "resolve"]


@dataclass(frozen=True)
class Plan:
    """What conversion writes: the options with order and coverage decided, every fit, the chosen channels.

    `coverage_trials` and `slowdown` are the evidence of measured choices, kept in the release record.
    """

    options: ConvertOptions
    plans: list[LayerPlan]
    masks: list[torch.Tensor]
    coverage_trials: list[dict] = field(default_factory=list)
    slowdown: dict | None = None


def resolve(checkpoint: Checkpoint, model, stats: Stats, options: ConvertOptions, secret: bytes, *,
            progress: Progress = None, budget: Budget | None = None) -> Plan:
    """Decide everything the options leave open: `--slowdown`, then `--coverage auto`, then the channels.

    Args:
        checkpoint: the source.
        model: the source loaded in float32 (needed by measured choices; None when none is asked for).
        stats: its calibration.
        options: validated convert options.
        secret: the hardening secret (measured candidates are built exactly as they will be written).
        budget: sizes `--coverage auto`'s held-out text (`packager.stages.budget`; None: full size).
    """
    from packager.stages.plan.coverage import choose_coverage
    from packager.stages.plan.fits import plan_layers
    from packager.stages.plan.slowdown import resolve_slowdown

    say = reporter(progress)
    options, plans, masks, slowdown = resolve_slowdown(checkpoint, model, stats, options, progress=progress)
    if plans is not None:
        return Plan(options, plans, masks, [], slowdown)
    say(f"fitting order-{options.order} {options.fit} series for {checkpoint.num_layers} layers")
    plans = plan_layers(checkpoint, stats, options)
    trials: list[dict] = []
    coverage = options.coverage
    if coverage is None:
        coverage, trials = choose_coverage(checkpoint, model, plans, stats, options, secret, progress=progress,
                                           budget=budget)
    masks = select_channels(plans, coverage, options.fit)
    return Plan(options, plans, masks, trials, slowdown)
