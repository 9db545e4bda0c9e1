"""A release's tensors and transform spec in memory: what `convert` writes and what planning measures.

Everything here is computed from the source checkpoint, its fits (`LayerPlan`s), the expanded-channel
masks and the secret; nothing is written. `convert` streams the same tensors to disk, and the
planning stages (`--coverage auto`) swap them into a model to measure a candidate.
"""

from __future__ import annotations

import torch

from packager import TRANSFORMERS_RANGE, __version__
from packager.formats.checkpoint import Checkpoint
from packager.formats.names import FORMAT_VERSION
from packager.formats.stats import Stats
from packager.maths.architectures import Unit
from packager.maths.series.activations import get_activation
from packager.maths.transform import (
    ChannelGroup,
    LayerPlan,
    SourceMLP,
    allocation_orders,
    assemble,
    release_orders,
    secret_id,
    unit_groups,
)
from packager.stages.options import ConvertOptions


def mlp_units(checkpoint: Checkpoint) -> list[Unit]:
    """The MLP units the release replaces: one per dense layer, one per expert (see `Adapter.units`)."""
    return checkpoint.adapter.units(checkpoint.config)


def source_mlp(checkpoint: Checkpoint, unit: Unit | int) -> SourceMLP:
    """Read one MLP unit's tensors from the checkpoint (float64); an int is a unit index."""
    if isinstance(unit, int):
        unit = mlp_units(checkpoint)[unit]
    parts = checkpoint.adapter.read_mlp(checkpoint, unit)
    return SourceMLP(**{name: tensor.double() for name, tensor in parts.items()})



def channel_groups_of(checkpoint: Checkpoint, plans: list[LayerPlan], masks: list[torch.Tensor],
                      options: ConvertOptions, secret: bytes, layer: int,
                      boosts: list[torch.Tensor] | None = None) -> list[ChannelGroup]:
    """MLP unit `layer`'s channel groups in release order: the secret draws, small, no tensor of the hidden size."""
    return unit_groups(plans[layer], masks[layer], None if boosts is None else boosts[layer],
                       options.hardening_scheme, secret, layer, gated=checkpoint.adapter.gated)


def layer_tensors(checkpoint: Checkpoint, plans: list[LayerPlan], masks: list[torch.Tensor],
                  options: ConvertOptions, secret: bytes, layer: int,
                  boosts: list[torch.Tensor] | None = None, *, dtype: torch.dtype = torch.float64
                  ) -> dict[str, torch.Tensor]:
    """The release tensors of MLP unit `layer` (a layer's MLP or an expert), named as released.

    With order allocation (`boosts`), the unit's channels form groups released one after the other:
    base-order channels, boost-order channels, then plaintext channels (docs/FORMAT.md, "groups").
    """
    unit = mlp_units(checkpoint)[layer]
    source = SourceMLP(**checkpoint.adapter.read_mlp(checkpoint, unit))
    groups = channel_groups_of(checkpoint, plans, masks, options, secret, layer, boosts)
    return {unit.prefix + name: value for name, value in assemble(source, groups, dtype).items()}


def release_spec(checkpoint: Checkpoint, stats: Stats, options: ConvertOptions, masks: list[torch.Tensor],
                 plans: list[LayerPlan], secret: bytes, dtype_name: str,
                 boosts: list[torch.Tensor] | None = None) -> dict:
    """config.json["unswift"]: every parameter of the transform (the one source of truth)."""
    adapter = checkpoint.adapter
    hidden_act = adapter.activation_name(checkpoint.config)
    orders = [release_orders(plan, mask, None if boosts is None else boosts[i])[1]
              for i, (plan, mask) in enumerate(zip(plans, masks, strict=True))]
    expanded = sum(int((o >= 0).sum()) for o in orders)
    total = sum(m.numel() for m in masks)
    fit = plans[0].fit
    units = mlp_units(checkpoint)
    has_down_bias = "down_bias" in adapter.read_mlp(checkpoint, units[0], parts=("down_bias",))
    return {
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "base_model_type": adapter.base_model_type,
        "family": adapter.family,
        "hidden_act": hidden_act,
        "activation": get_activation(hidden_act).name,
        "gated": adapter.gated,
        "order": max([int(o.max()) for o in orders if o.numel()] + [0]),
        "requested_order": options.order,
        "basis": fit.basis,
        "extrapolation": fit.extrapolation,
        "fit": options.fit,
        "fit_parameters": _fit_parameters(options),
        "coverage": expanded / total,
        "requested_coverage": "auto" if options.coverage is None else options.coverage,
        "min_top1": options.min_top1,
        "layers": [{"unit": unit.name, "intermediate": int(m.numel()), "expanded": int((o >= 0).sum()),
                    "groups": _groups(o)}
                   for unit, m, o in zip(units, masks, orders, strict=True)],
        "allocation": _allocation(options, boosts, masks),
        "padding": _padding(plans, masks, orders),
        "experts": adapter.runtime_spec(),
        "out_bias": has_down_bias,
        "hardening": {"enabled": options.hardening, **options.hardening_scheme.to_json(),
                      "secret_id": secret_id(secret)},
        "calibration": stats.summary(),
        "dtype": dtype_name,
        "transformers": TRANSFORMERS_RANGE,
    }


def _groups(orders: torch.Tensor) -> list[dict]:
    """The unit's channel groups, one per series order (ascending), in release order."""
    distinct = sorted(set(int(o) for o in orders.tolist() if o >= 0))
    return [{"channels": int((orders == order).sum()), "order": order} for order in distinct]


def _padding(plans: list[LayerPlan], masks: list[torch.Tensor], orders: list[torch.Tensor]) -> dict:
    """What the padding criterion did to the release (docs/FORMAT.md, "No padding")."""
    from packager.maths import padding

    sources = sorted({plan.out_energy_source for plan in plans})
    return {"criterion": "E||theta_c phi_c||^2 > u^2 E||y||^2 / C_U, u = 2^-24 (float32), on the calibration "
                         f"statistics, with a margin of {padding.MARGIN:g}x in energy",
            "unit_output_energy": sources[0] if len(sources) == 1 else sources,
            "plaintext_channels_added": sum(int((m & (o < 0)).sum()) for m, o in zip(masks, orders, strict=True)),
            "max_groups": padding.MAX_GROUPS, "group_cost_columns": padding.RELEASE_GROUP_COST}


def _allocation(options: ConvertOptions, boosts: list[torch.Tensor] | None, masks: list[torch.Tensor]) -> dict:
    if boosts is None:
        return {"kind": "uniform", "order": options.order}
    base, boost = allocation_orders(options.order)
    boosted, expanded = sum(int(b.sum()) for b in boosts), sum(int(m.sum()) for m in masks)
    return {"kind": "boost", "base_order": base, "boost_order": boost, "boosted_channels": boosted,
            "expanded_channels": expanded,
            "columns_per_expanded_channel": (boosted * (boost + 1) + (expanded - boosted) * (base + 1))
            / max(expanded, 1)}


def _fit_parameters(options: ConvertOptions) -> dict:
    from packager.maths.series.fit import TRIM_CANDIDATES, UNIFORM_FLOOR

    if options.fit == "taylor":
        return {"centre": "midpoint of calibrated range", "coefficients": "f^(n)(z0)/n!",
                "normalised": options.hardening_scheme.normalise}
    return {"basis": "chebyshev", "weights": "calibrated density", "uniform_floor": UNIFORM_FLOOR,
            "trim_candidates": list(TRIM_CANDIDATES), "extrapolation": "linear",
            "selection": "global, by expected output error"}
