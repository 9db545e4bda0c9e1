"""Configuration classes of an unswift (TaylorMLP) release.

Each class is the base family's config under its own `model_type` ("unswift_<base>"), so a load
without `trust_remote_code=True` fails loudly instead of silently building the base architecture
with missing MLP weights. The transform parameters live in the `unswift` field.
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


class UnswiftLlamaConfig(LlamaConfig):
    model_type = "unswift_llama"
    unswift: dict | None = None


class UnswiftMistralConfig(MistralConfig):
    model_type = "unswift_mistral"
    unswift: dict | None = None


class UnswiftPhiConfig(PhiConfig):
    model_type = "unswift_phi"
    unswift: dict | None = None


class UnswiftQwen2Config(Qwen2Config):
    model_type = "unswift_qwen2"
    unswift: dict | None = None


class UnswiftQwen3Config(Qwen3Config):
    model_type = "unswift_qwen3"
    unswift: dict | None = None


class UnswiftGemmaConfig(GemmaConfig):
    model_type = "unswift_gemma"
    unswift: dict | None = None


class UnswiftGemma2Config(Gemma2Config):
    model_type = "unswift_gemma2"
    unswift: dict | None = None


class UnswiftGemma3TextConfig(Gemma3TextConfig):
    model_type = "unswift_gemma3_text"
    unswift: dict | None = None


class UnswiftPhi3Config(Phi3Config):
    model_type = "unswift_phi3"
    unswift: dict | None = None


class UnswiftGPTNeoXConfig(GPTNeoXConfig):
    model_type = "unswift_gpt_neox"
    unswift: dict | None = None


class UnswiftMixtralConfig(MixtralConfig):
    model_type = "unswift_mixtral"
    unswift: dict | None = None


class UnswiftQwen2MoeConfig(Qwen2MoeConfig):
    model_type = "unswift_qwen2_moe"
    unswift: dict | None = None


class UnswiftQwen3MoeConfig(Qwen3MoeConfig):
    model_type = "unswift_qwen3_moe"
    unswift: dict | None = None
