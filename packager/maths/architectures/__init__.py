"""Architecture adapters: where each family keeps its MLP weights and what its activation is.

An adapter is data (see `adapter.Adapter`). Adding a family adds a registry entry here and its runtime
classes in `packager/runtime/`; the pipeline does not change. An architecture that is not registered,
a multimodal checkpoint, or an activation that cannot be expanded exactly is refused with a
`UsageError` naming what is supported; nothing is ever approximated silently.
"""

from __future__ import annotations

from packager.errors import UsageError
from packager.maths.architectures.adapter import PARTS, Adapter, Experts, Unit
from packager.maths.series.activations import ACTIVATIONS

__all__ = ["PARTS", "REGISTRY", "Adapter", "Experts", "Unit", "adapter_for", "supported_architectures"]

_QWEN_MOE = {"count": "num_experts", "sparse_step": True}

#: `config.architectures[0]` -> adapter.
REGISTRY: dict[str, Adapter] = {
    # The paper's three.
    "LlamaForCausalLM": Adapter("Llama", "llama"),
    "MistralForCausalLM": Adapter("Mistral", "mistral"),
    "PhiForCausalLM": Adapter("Phi", "phi", gate="fc1", up=None, down="fc2"),
    # Dense families published today.
    "Qwen2ForCausalLM": Adapter("Qwen2", "qwen2"),
    "Qwen3ForCausalLM": Adapter("Qwen3", "qwen3"),
    "GemmaForCausalLM": Adapter("Gemma", "gemma"),
    "Gemma2ForCausalLM": Adapter("Gemma2", "gemma2", act_key="hidden_activation"),
    "Gemma3ForCausalLM": Adapter("Gemma3Text", "gemma3_text", act_key="hidden_activation"),
    "Phi3ForCausalLM": Adapter("Phi3", "phi3", gate="gate_up_proj", up=None, fused=True),
    "GPTNeoXForCausalLM": Adapter("GPTNeoX", "gpt_neox", layers_prefix="gpt_neox.layers",
                                  gate="dense_h_to_4h", up=None, down="dense_4h_to_h",
                                  renames=((r"^embed_out\.", "lm_head."),)),
    # Mixtures of experts: every routed expert and the shared expert are expanded; routers stay as they are.
    "MixtralForCausalLM": Adapter("Mixtral", "mixtral", experts=Experts(
        "num_local_experts", legacy=("w1", "w3", "w2"), legacy_block="block_sparse_moe"),
        renames=((r"\.block_sparse_moe\.", ".mlp."),)),
    "Qwen2MoeForCausalLM": Adapter("Qwen2Moe", "qwen2_moe",
                                   experts=Experts(**_QWEN_MOE, shared="shared_expert")),
    "Qwen3MoeForCausalLM": Adapter("Qwen3Moe", "qwen3_moe", experts=Experts(**_QWEN_MOE)),
}

#: Config keys that only multimodal configs carry.
_MULTIMODAL_KEYS = ("vision_config", "audio_config", "text_config", "vision_tower", "mm_projector_type")


def supported_architectures() -> list[str]:
    return sorted(REGISTRY)


def adapter_for(config) -> Adapter:
    """The adapter for a source config.

    Raises:
        UsageError: the architecture is not registered (multimodal checkpoints included), or its
            activation cannot be expanded exactly; the message names what is supported.
    """
    architectures = getattr(config, "architectures", None) or []
    name = architectures[0] if architectures else f"<model_type {getattr(config, 'model_type', '?')}>"
    adapter = REGISTRY.get(name)
    supported = ", ".join(supported_architectures())
    if adapter is None:
        if any(getattr(config, key, None) is not None for key in _MULTIMODAL_KEYS):
            raise UsageError(
                f"architecture '{name}' is multimodal; unswift converts text-only causal language models: "
                f"supported: {supported}",
                hint="convert the text model on its own if its publisher releases one (e.g. a *ForCausalLM)",
            )
        raise UsageError(
            f"architecture '{name}' is not supported; supported: {supported}",
            hint="open an issue with the checkpoint's config.json to request a family",
        )
    act = adapter.activation_name(config)
    if act not in ACTIVATIONS:
        raise UsageError(
            f"activation '{act}' of '{name}' cannot be expanded exactly, and unswift never approximates it "
            f"by another function; supported activations: {', '.join(sorted(ACTIVATIONS))}"
        )
    return adapter
