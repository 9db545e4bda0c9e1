"""The model an attacker rebuilds: recovered MLPs swapped into the release model, measured on held-out text.

Recovered weights are only as good as the model they make, so each attack's MLPs replace the
release's `TaylorMLP`s in the release model itself (same attention, embeddings, norms) and the result
is compared, token by token, with the target logits (the source's, or the release's without one).
The release model is restored afterwards, so one loaded model serves every attack of an audit.
"""

from __future__ import annotations

import torch

from packager.maths.series.activations import Activation
from packager.stages.audit.attacks import RecoveredMLP


class PlainMLP(torch.nn.Module):
    """A recovered MLP as a module, swapped into the release model in place of a `TaylorMLP`."""

    def __init__(self, recovered: RecoveredMLP, activation: Activation) -> None:
        super().__init__()
        self.recovered, self.activation = recovered, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.recovered(x.float(), self.activation).to(x.dtype)


def swap_module(model: torch.nn.Module, path: str, module: torch.nn.Module) -> torch.nn.Module:
    """Put `module` at `path` (dotted, list indices as digits) in `model`; returns the module it replaced."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = parent[int(name)] if name.isdigit() else getattr(parent, name)
    if name.isdigit():
        parent[int(name)] = module
    else:
        setattr(parent, name, module)
    return old


def rebuilt_top1(model: torch.nn.Module, units: list[str], recovered: dict[int, RecoveredMLP],
                 activation: Activation, target: list[torch.Tensor], ids: torch.Tensor) -> float:
    """Top-1 agreement with `target` of `model` with unit i replaced by `recovered[i]` (then restored).

    `target` comes from `evaluate.reference_logits(..., batch_size=1)` over the same `ids`.
    """
    from packager.stages.evaluate import compare_to_logits

    originals = {i: swap_module(model, units[i], PlainMLP(out, activation)) for i, out in recovered.items()}
    try:
        return compare_to_logits(target, model, ids, batch_size=1).top1_agreement
    finally:
        for i, module in originals.items():
            swap_module(model, units[i], module)
