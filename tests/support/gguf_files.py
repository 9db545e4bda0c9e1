"""Write a Llama-layout state dict as a GGUF file the way llama.cpp's converter lays it out.

Tensor names `token_embd`, `blk.N.attn_q`, ...; q and k rows interleaved per head (llama.cpp's `permute`
for the `llama` architecture); matrices quantised with the gguf package's own quantiser (Q4_0, Q8_0)
or stored as F32; norms F32. Used by the trace tests and benchmarks/fingerprint_robustness.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

_LAYER = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
          "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}


def gguf_name(name: str) -> str | None:
    if name in _GLOBAL:
        return _GLOBAL[name]
    parts = name.split(".")
    if parts[:2] == ["model", "layers"]:
        module = ".".join(parts[3:-1])
        if module in _LAYER:
            return f"blk.{parts[2]}.{_LAYER[module]}.{parts[-1]}"
    return None


def permute_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's q/k row order: each head's two rotary halves interleaved."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def write_gguf(state: dict[str, torch.Tensor], path: Path, *, heads: int, kv_heads: int, quant: str = "Q4_0") -> Path:
    import gguf
    import gguf.quants as quants

    kind = getattr(gguf.GGMLQuantizationType, quant)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1 + max(int(n.split(".")[2]) for n in state if n.startswith("model.layers.")))
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    for name, tensor in state.items():
        target = gguf_name(name)
        if target is None:
            continue
        t = tensor.detach().float()
        if name.endswith("q_proj.weight"):
            t = permute_rows(t, heads)
        elif name.endswith("k_proj.weight"):
            t = permute_rows(t, kv_heads)
        array = t.numpy().astype(np.float32)
        if array.ndim == 2 and quant != "F32" and array.shape[1] % 32 == 0:
            writer.add_tensor(target, quants.quantize(array, kind), raw_dtype=kind)
        else:
            writer.add_tensor(target, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
