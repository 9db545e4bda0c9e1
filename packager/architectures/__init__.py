"""Architecture adapters: where each family keeps its MLP weights and what its activation is.

An adapter is data. Adding a family adds a registry entry (and its runtime classes); the pipeline does
not change. An architecture that is not registered is refused with the list of supported ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from packager.errors import UsageError
from packager.series.activations import ACTIVATIONS


@dataclass(frozen=True)
class Adapter:
    """How one model family lays out its decoder MLPs, in checkpoint names and in modules."""

    family: str  # runtime class stem: Unswift{Family}Config / Model / ForCausalLM
    base_model_type: str
    layers_prefix: str = "model.layers"
    mlp: str = "mlp"
    gate: str = "gate_proj"  # the projection whose output feeds the activation
    up: str | None = "up_proj"  # None for non-gated MLPs
    down: str = "down_proj"
    act_key: str = "hidden_act"
    bias: bool = False  # the MLP projections carry biases

    @property
    def gated(self) -> bool:
        return self.up is not None

    def activation_name(self, config) -> str:
        return getattr(config, self.act_key)

    def key(self, layer: int, projection: str, kind: str = "weight") -> str:
        return f"{self.layers_prefix}.{layer}.{self.mlp}.{projection}.{kind}"

    def mlp_prefix(self, layer: int) -> str:
        return f"{self.layers_prefix}.{layer}.{self.mlp}."

    def mlp_modules(self, model: nn.Module) -> list[nn.Module]:
        """The MLP module of every decoder layer of an instantiated source model."""
        root = model
        for part in self.layers_prefix.split("."):
            root = getattr(root, part)
        return [getattr(layer, self.mlp) for layer in root]

    def preactivations(self, mlp: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(gate pre-activation g, up projection u or None) of one MLP for its input x."""
        g = getattr(mlp, self.gate)(x)
        u = getattr(mlp, self.up)(x) if self.up else None
        return g, u

    def runtime_classes(self) -> dict[str, str]:
        stem = f"Unswift{self.family}"
        return {
            "AutoConfig": f"configuration_unswift.{stem}Config",
            "AutoModel": f"modeling_unswift.{stem}Model",
            "AutoModelForCausalLM": f"modeling_unswift.{stem}ForCausalLM",
        }


#: `config.architectures[0]` -> adapter.
REGISTRY: dict[str, Adapter] = {
    "LlamaForCausalLM": Adapter("Llama", "llama"),
    "MistralForCausalLM": Adapter("Mistral", "mistral"),
    "Qwen2ForCausalLM": Adapter("Qwen2", "qwen2"),
    "Qwen3ForCausalLM": Adapter("Qwen3", "qwen3"),
    "GemmaForCausalLM": Adapter("Gemma", "gemma", act_key="hidden_act"),
}


def adapter_for(config) -> Adapter:
    """The adapter for a source config; UsageError naming the supported architectures otherwise."""
    architectures = getattr(config, "architectures", None) or []
    name = architectures[0] if architectures else f"<model_type {getattr(config, 'model_type', '?')}>"
    adapter = REGISTRY.get(name)
    if adapter is None:
        raise UsageError(
            f"architecture '{name}' is not supported; supported: {', '.join(sorted(REGISTRY))}",
            hint="open an issue with the checkpoint's config.json to request a family",
        )
    act = adapter.activation_name(config)
    if act not in ACTIVATIONS:
        raise UsageError(
            f"activation '{act}' of '{name}' cannot be expanded exactly; "
            f"supported activations: {', '.join(sorted(ACTIVATIONS))}"
        )
    return adapter
