"""Tiny random checkpoints built from real transformers configs, with weights scaled so that MLP gate
pre-activations reach |g| ~ 6 (default tiny inits stay below 1 and would exercise nothing)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, max_position_embeddings=256)
_TOKENS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
_MOE = {"num_experts_per_tok": 2, "moe_intermediate_size": 32}

#: family -> (config class, model class, config keys beyond BASE).
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "phi": ("PhiConfig", "PhiForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 16}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 16, "query_pre_attn_scalar": 16}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 16, "query_pre_attn_scalar": 16,
                                                          "sliding_window": 16}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {**_TOKENS}),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {**_TOKENS}),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 2,
                                                        "intermediate_size": 64}),
    # Layer 0 dense (`mlp_only_layers`), layer 1 a sparse block with 4 experts and a shared expert.
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", {**_MOE, "num_experts": 4, "mlp_only_layers": [0],
                                                            "shared_expert_intermediate_size": 64}),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", {**_MOE, "num_experts": 4, "head_dim": 16}),
}

#: Parameter-name endings (as in the 5.x modules) of gate, up and down projections.
_GATE = ("mlp.gate_proj.weight", "mlp.fc1.weight", "mlp.dense_h_to_4h.weight",
         "shared_expert.gate_proj.weight")
_UP = ("mlp.up_proj.weight", "shared_expert.up_proj.weight")
_DOWN = ("mlp.down_proj.weight", "mlp.fc2.weight", "mlp.dense_4h_to_h.weight",
         "shared_expert.down_proj.weight", "experts.down_proj")
#: Gate rows then up rows (in the last two dimensions, [2I, H]).
_FUSED = ("mlp.gate_up_proj.weight", "experts.gate_up_proj")
_ROUTER = "mlp.gate.weight"


def _normal(like: torch.Tensor, std: float) -> torch.Tensor:
    return torch.randn_like(like) * std


def build_tiny(family: str, out: Path, *, seed: int = 0, gate_scale: float = 6.0,
               original_format: bool = True, wide_channels: int = 0, **overrides) -> Path:
    """Save a tiny random `family` checkpoint whose gate pre-activations have std ~ gate_scale / 3.

    `original_format=False` saves mixture-of-experts weights packed as transformers 5.x holds them in
    memory (`experts.gate_up_proj`, `experts.down_proj`) instead of one tensor per expert.
    `wide_channels=k` makes the first k gate rows of every dense MLP 6x wider, like the few outlier
    channels of real LLMs (heavy-tailed widths are what order allocation is for).
    """
    config_name, model_name, extra = FAMILIES[family]
    config = getattr(transformers, config_name)(**{**BASE, **extra, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            fan_in = param.shape[-1]
            gate_std = (gate_scale / 3) / fan_in**0.5  # normed inputs have unit scale per element
            if name.endswith(_GATE):
                param.copy_(_normal(param, gate_std))
                if wide_channels and param.dim() == 2:
                    param[:wide_channels] *= 6.0
            elif name.endswith(_UP + _DOWN):
                param.copy_(_normal(param, 1 / fan_in**0.5))
            elif name.endswith(_FUSED):
                half = param.shape[-2] // 2
                param[..., :half, :].copy_(_normal(param[..., :half, :], gate_std))
                param[..., half:, :].copy_(_normal(param[..., half:, :], 1 / fan_in**0.5))
            elif name.endswith(_ROUTER) and param.dim() == 2 and param.shape[0] < param.shape[1]:
                # A decisive router: top-k choices far from ties, so bf16 noise cannot flip them.
                param.copy_(_normal(param, 3 / fan_in**0.5))
            elif name.endswith(("mlp.fc1.bias", "mlp.dense_h_to_4h.bias")):
                param.copy_(_normal(param, 0.5))  # biased pre-activations: the series is about g + b
    model.save_pretrained(out, save_original_format=original_format)
    return out


def add_tokenizer(folder: Path, vocab_size: int = BASE["vocab_size"]) -> Path:
    """Give a tiny checkpoint a real (word-level) fast tokenizer with a chat template, so that what a user
    runs on a release, tokenizer included, can run on a tiny one."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(vocab_size - 4)]
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                                     eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    tokenizer.save_pretrained(folder)
    return folder
