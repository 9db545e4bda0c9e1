"""A synthetic Llama checkpoint of several GB, written shard by shard (never held in memory at once).

Random weights with the scales of a trained model (gate pre-activations of a few units, like
tests/tiny.py), fp32, safetensors shards of at most --shard-size bytes plus the index, and the demo
checkpoint's tokenizer so calibration can read text. Default shape: TinyLlama-like (hidden 2048,
intermediate 5632, 16 heads, 4 KV heads) with 20 layers and vocabulary 49152: 1.10 B parameters, 4.4 GB.

    python benchmarks/synthetic_checkpoint.py /tmp/synthetic --layers 20 --shard-size 1GB
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

DEMO = Path.home() / ".cache" / "unswift" / "demo" / "SmolLM2-135M-Instruct"


def layer_tensors(layer: int, hidden: int, intermediate: int, heads: int, kv_heads: int,
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
    head_dim = hidden // heads
    prefix = f"model.layers.{layer}."

    def normal(rows: int, cols: int, std: float) -> torch.Tensor:
        return torch.randn(rows, cols, generator=generator) * std

    unit = hidden**-0.5
    return {
        prefix + "input_layernorm.weight": torch.ones(hidden),
        prefix + "post_attention_layernorm.weight": torch.ones(hidden),
        prefix + "self_attn.q_proj.weight": normal(heads * head_dim, hidden, unit),
        prefix + "self_attn.k_proj.weight": normal(kv_heads * head_dim, hidden, unit),
        prefix + "self_attn.v_proj.weight": normal(kv_heads * head_dim, hidden, unit),
        prefix + "self_attn.o_proj.weight": normal(hidden, heads * head_dim, unit * 0.5),
        prefix + "mlp.gate_proj.weight": normal(intermediate, hidden, 2.0 * unit),  # g ~ N(0, 2)
        prefix + "mlp.up_proj.weight": normal(intermediate, hidden, unit),
        prefix + "mlp.down_proj.weight": normal(hidden, intermediate, 0.5 * intermediate**-0.5),
    }


def parse_size(text: str) -> int:
    units = {"kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "b": 1}
    lowered = text.strip().lower()
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if lowered.endswith(suffix):
            return int(float(lowered[: -len(suffix)]) * factor)
    return int(lowered)


def build(out: Path, *, layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int, vocab: int,
          shard_bytes: int, seed: int = 0) -> dict:
    """Write the checkpoint; returns a summary (parameters, bytes, shards)."""
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": hidden // heads, "hidden_act": "silu",
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "vocab_size": vocab, "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "dtype": "float32",
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "attention_bias": False,
        "mlp_bias": False,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    pending: dict[str, torch.Tensor] = {}
    shards: list[str] = []
    weight_map: dict[str, str] = {}
    total = 0

    def flush() -> None:
        nonlocal pending
        if not pending:
            return
        name = f"model-{len(shards) + 1:05d}.safetensors"
        save_file(pending, str(out / name), metadata={"format": "pt"})
        shards.append(name)
        weight_map.update({key: name for key in pending})
        pending = {}

    def add(tensors: dict[str, torch.Tensor]) -> None:
        nonlocal total
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if pending and sum(t.numel() * t.element_size() for t in pending.values()) + size > shard_bytes:
            flush()
        pending.update(tensors)
        total += size

    embed_std = 0.02
    add({"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=generator) * embed_std})
    for layer in range(layers):
        add(layer_tensors(layer, hidden, intermediate, heads, kv_heads, generator))
    add({"model.norm.weight": torch.ones(hidden)})
    add({"lm_head.weight": torch.randn(vocab, hidden, generator=generator) * hidden**-0.5})
    flush()
    count = len(shards)
    renamed = {}
    for i, name in enumerate(shards):
        final = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
        (out / name).rename(out / final)
        renamed[name] = final
    index = {"metadata": {"total_size": total},
             "weight_map": {key: renamed[file] for key, file in sorted(weight_map.items())}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (DEMO / name).is_file():
            shutil.copyfile(DEMO / name, out / name)
    sizes = [(out / f).stat().st_size for f in renamed.values()]
    head_dim = hidden // heads
    layer_params = 2 * hidden + 2 * hidden * hidden + 2 * hidden * head_dim * kv_heads + 3 * hidden * intermediate
    return {"path": str(out), "parameters": total // 4, "bytes": total, "shards": count,
            "largest_shard_bytes": max(sizes), "layer_bytes": 4 * layer_params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--shard-size", default="1GB")
    args = parser.parse_args()
    summary = build(args.out, layers=args.layers, hidden=args.hidden, intermediate=args.intermediate,
                    heads=args.heads, kv_heads=args.kv_heads, vocab=args.vocab, shard_bytes=parse_size(args.shard_size))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
