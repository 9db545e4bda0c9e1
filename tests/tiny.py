"""Tiny random checkpoints built from real transformers configs, with weights scaled so that MLP gate
pre-activations reach |g| ~ 6 (default tiny inits stay below 1 and would exercise nothing)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, max_position_embeddings=256)

FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
}


def build_tiny(family: str, out: Path, *, seed: int = 0, gate_scale: float = 6.0, **overrides) -> Path:
    """Save a tiny random `family` checkpoint whose gate pre-activations have std ~ gate_scale / 3."""
    config_name, model_name, extra = FAMILIES[family]
    config = getattr(transformers, config_name)(**{**BASE, **extra, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("mlp.gate_proj.weight") or name.endswith("mlp.fc1.weight"):
                # RMS-normed inputs have unit scale per element: row norm sets the std of g.
                param.copy_(torch.randn_like(param) * (gate_scale / 3) / param.shape[1] ** 0.5)
            elif name.endswith("mlp.up_proj.weight") or name.endswith("mlp.down_proj.weight"):
                param.copy_(torch.randn_like(param) / param.shape[1] ** 0.5)
    model.save_pretrained(out)
    return out
