"""Fit every channel of every MLP unit: the per-channel series each release is built from.

Cheap next to a forward pass: statistics plus the norms of the down-projection columns (which weigh
each channel's error by its contribution to the output).
"""

from __future__ import annotations

from packager.errors import UsageError
from packager.formats.checkpoint import Checkpoint
from packager.formats.stats import Stats
from packager.maths.series.activations import get_activation
from packager.maths.transform import LayerPlan, fit_layer
from packager.stages.options import ConvertOptions
from packager.stages.tensors import mlp_units


def plan_layers(checkpoint: Checkpoint, stats: Stats, options: ConvertOptions) -> list[LayerPlan]:
    """Fit every channel of every MLP unit (cheap: statistics plus down-column norms)."""
    units = mlp_units(checkpoint)
    if len(stats.layers) != len(units):
        raise UsageError(
            f"statistics have {len(stats.layers)} MLP units but the checkpoint has {len(units)}; "
            "they come from another model: re-run `unswift calibrate` on this checkpoint"
        )
    activation = get_activation(checkpoint.adapter.activation_name(checkpoint.config))
    plans = []
    for unit, layer_stats in zip(units, stats.layers, strict=True):
        down = checkpoint.adapter.read_mlp(checkpoint, unit, parts=("down",))["down"].double()
        if down.shape[1] != layer_stats.min.numel():
            raise UsageError(
                f"statistics of '{unit.name}' do not match the checkpoint's MLP width; re-calibrate")
        plans.append(fit_layer(activation, layer_stats, down.norm(dim=0), order=options.order,
                               fit=options.fit, normalise=options.hardening_scheme.normalise,
                               allocation=options.allocation))
    return plans
