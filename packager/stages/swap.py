"""MLP modules swapped in and out of a loaded source model: how planning measures a candidate in memory.

`--coverage auto` and `--slowdown` measure candidates on the source model with each decoder layer's
MLP replaced (by the runtime's own `TaylorMLP`s, by modules of the release's shapes, or by the fitted
series); the originals always go back afterwards.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from packager.maths.architectures import Adapter


class MlpSet:
    """One MLP module per decoder layer; `install()` puts them in place (None: the model's own MLPs).

    Two sets on one model (the source's and a candidate's) let the bench interleave them step by step.
    """

    def __init__(self, model: nn.Module, adapter: Adapter, modules: list[nn.Module] | None = None) -> None:
        self.layers = list(adapter.decoder_layers(model))
        self.name = adapter.mlp
        self.modules = modules if modules is not None else [getattr(layer, self.name) for layer in self.layers]

    def install(self) -> None:
        for layer, module in zip(self.layers, self.modules, strict=True):
            setattr(layer, self.name, module)


@torch.no_grad()
def install_release_mlps(model: nn.Module, adapter: Adapter, spec: dict,
                         layers: dict[int, dict[str, torch.Tensor]]) -> list[tuple[nn.Module, str, nn.Module]]:
    """Install the runtime's series modules (dense MLPs and experts alike) holding `layers`' tensors.

    Returns the (module, attribute, original) triples `restore` puts back.
    """
    from packager.runtime.modeling_unswift import install_taylor_mlps, module_state

    config = types.SimpleNamespace(unswift=spec, hidden_size=model.config.hidden_size)
    with torch.device("meta"):  # no random init of weights the release's tensors replace (seconds per candidate)
        replaced = install_taylor_mlps(list(adapter.decoder_layers(model)), config)
    state = module_state({name: tensor.float() for unit in layers.values() for name, tensor in unit.items()})
    missing = set(state) - set(model.state_dict())
    if missing:
        raise RuntimeError(f"release tensors without a module in the model: {sorted(missing)[:3]}")
    model.load_state_dict(state, strict=False, assign=True)
    empty = [name for name, parameter in model.named_parameters() if parameter.is_meta]
    if empty:
        restore(replaced)
        raise RuntimeError(f"release tensors missing for {empty[:3]}")
    model.to(next(iter(model.parameters())).device)
    return replaced


def restore(replaced: list[tuple[nn.Module, str, nn.Module]]) -> None:
    """Put back what `install_release_mlps` replaced."""
    for module, attribute, original in replaced:
        setattr(module, attribute, original)
