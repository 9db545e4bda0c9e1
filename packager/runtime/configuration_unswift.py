"""Configuration classes of an unswift (TaylorMLP) release.

Each class is the base family's config under its own `model_type` ("unswift_<base>"), so a load
without `trust_remote_code=True` fails loudly instead of silently building the base architecture
with missing MLP weights. The transform parameters live in the `unswift` field.
"""

from transformers import (
    GemmaConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)


class UnswiftLlamaConfig(LlamaConfig):
    model_type = "unswift_llama"
    unswift: dict | None = None


class UnswiftMistralConfig(MistralConfig):
    model_type = "unswift_mistral"
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
