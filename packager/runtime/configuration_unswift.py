"""Configuration classes of an unswift (TaylorMLP) release.

Each class is the base family's config under its own `model_type` ("unswift_<base>"), so a load
without `trust_remote_code=True` fails loudly instead of silently building the base architecture
with missing MLP weights. The transform parameters live in the `unswift` field.

Tensor parallelism: each class keeps its family's plan for attention and embeddings and drops the
family's MLP entries, which name modules (gate_proj, experts.gate_up_proj, ...) a release does not
have; `moe_tp_experts` in particular would all-reduce experts that are not sharded. The series units
are sharded where their layout allows it (`modeling_unswift.series_tp_plan`), replicated otherwise.
Expert parallelism is not offered: a release's experts differ in shape from one another.
"""

from transformers import (
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    Phi3Config,
    PhiConfig,
    Qwen2Config,
    Qwen2MoeConfig,
    Qwen3Config,
    Qwen3MoeConfig,
)


def _attention_plan(base):
    """The base family's tensor-parallel plan without its MLP entries."""
    return {name: style for name, style in (base.base_model_tp_plan or {}).items() if ".mlp." not in name}


class UnswiftLlamaConfig(LlamaConfig):
    model_type = "unswift_llama"
    unswift: dict | None = None
    base_model_tp_plan = _attention_plan(LlamaConfig)


class UnswiftMistralConfig(MistralConfig):
    model_type = "unswift_mistral"
    unswift: dict | None = None
    base_model_tp_plan = _attention_plan(MistralConfig)


class UnswiftPhiConfig(PhiConfig):
    model_type = "unswift_phi"
    unswift: dict | None = None
    base_model_tp_plan = _attention_plan(PhiConfig)


class UnswiftQwen2Config(Qwen2Config):
    model_type = "unswift_qwen2"
    unswift: dict | None = None
    base_model_tp_plan = _attention_plan(Qwen2Config)


class UnswiftQwen3Config(Qwen3Config):
    model_type = "unswift_qwen3"
    unswift: dict | None = None
    base_model_tp_plan = _attention_plan(Qwen3Config)


class UnswiftGemmaConfig(GemmaConfig):
    model_type = "unswift_gemma"
    unswift: dict | None = None
    base_model_tp_plan = _attention_plan(GemmaConfig)


class UnswiftGemma2Config(Gemma2Config):
    model_type = "unswift_gemma2"
    unswift: dict | None = None
    base_model_tp_plan = _attention_plan(Gemma2Config)


class UnswiftGemma3TextConfig(Gemma3TextConfig):
    model_type = "unswift_gemma3_text"
    unswift: dict | None = None
    base_model_tp_plan = _attention_plan(Gemma3TextConfig)


class UnswiftPhi3Config(Phi3Config):
    model_type = "unswift_phi3"
    unswift: dict | None = None
    base_model_tp_plan = _attention_plan(Phi3Config)


class UnswiftGPTNeoXConfig(GPTNeoXConfig):
    model_type = "unswift_gpt_neox"
    unswift: dict | None = None
    base_model_tp_plan = _attention_plan(GPTNeoXConfig)


class UnswiftMixtralConfig(MixtralConfig):
    model_type = "unswift_mixtral"
    unswift: dict | None = None
    base_model_tp_plan = _attention_plan(MixtralConfig)
    base_model_ep_plan = None


class UnswiftQwen2MoeConfig(Qwen2MoeConfig):
    model_type = "unswift_qwen2_moe"
    unswift: dict | None = None
    base_model_tp_plan = _attention_plan(Qwen2MoeConfig)
    base_model_ep_plan = None


class UnswiftQwen3MoeConfig(Qwen3MoeConfig):
    model_type = "unswift_qwen3_moe"
    unswift: dict | None = None
    base_model_tp_plan = _attention_plan(Qwen3MoeConfig)
    base_model_ep_plan = None
