"""Which checkpoint tensors carry a fingerprint, and under which layout-independent name.

A fingerprint pattern is keyed by a *role* — (decoder layer, expert, projection) — not by the file's
tensor name, because the same weights are stored under different names and layouts: fused
`qkv_proj` / `gate_up_proj` (Phi-3), heads interleaved in `query_key_value` (GPT-NeoX), experts packed
in one 3-D tensor (transformers 5.x) or one tensor per expert (older files, Mixtral's w1/w2/w3). A
suspect re-saved in another layout, or "llamafied", still maps every weight back to the role whose
pattern it carries.

Roles are the seven projections of a decoder layer, each as an nn.Linear weight [out, in]:
q, k, v, o (attention) and gate, up, down (MLP; `gate` is fc1 of a non-gated MLP, `down` is fc2).
Norms, biases, embeddings, the LM head and MoE routers are never fingerprinted: norms and biases are
tiny, embeddings/LM head are the anchor that alignment uses, and a router's argmax is discontinuous.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

ROLES = ("q", "k", "v", "o", "gate", "up", "down")
ATTENTION = ("q", "k", "v", "o")
MLP = ("gate", "up", "down")


@dataclass(frozen=True)
class Role:
    """One fingerprinted matrix: a projection of decoder layer `layer` (of routed expert `expert`,
    or of the shared expert when `expert == "shared"`)."""

    layer: int
    name: str
    expert: int | str | None = None

    @property
    def key(self) -> str:
        """The role's name inside the pattern key (see pattern.py): stable across layouts and versions."""
        expert = "" if self.expert is None else f"expert={self.expert}/"
        return f"layer={self.layer}/{expert}{self.name}"


@dataclass(frozen=True)
class Part:
    """Where one role's matrix [out, in] lives inside one checkpoint tensor.

    `read(t)` returns the matrix (a view where the layout allows it); `add_(t, delta)` adds a matrix of
    the role's shape in place, whatever the layout.
    """

    role: Role
    shape: tuple[int, int]
    _view: Callable[[torch.Tensor], torch.Tensor]
    _fold: Callable[[torch.Tensor], torch.Tensor]  # role-shaped matrix -> shape of `_view`'s result

    def read(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._view(tensor).reshape(self.shape)

    def add_(self, tensor: torch.Tensor, delta: torch.Tensor) -> None:
        view = self._view(tensor)
        view.add_(self._fold(delta.to(view.dtype)))


@dataclass(frozen=True)
class Dims:
    """The config numbers the layouts need."""

    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config) -> Dims:
        heads = int(config.num_attention_heads)
        kv = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = getattr(config, "head_dim", None) or int(config.hidden_size) // heads
        return cls(heads, kv, int(head_dim))


_LAYER = r"layers\.(?P<layer>\d+)\."
_PLAIN = {  # suffix after "layers.N." -> role
    r"(?:self_attn|attention)\.q_proj\.weight": "q",
    r"(?:self_attn|attention)\.k_proj\.weight": "k",
    r"(?:self_attn|attention)\.v_proj\.weight": "v",
    r"(?:self_attn|attention)\.(?:o_proj|dense)\.weight": "o",
    r"mlp\.(?:gate_proj|fc1|dense_h_to_4h)\.weight": "gate",
    r"mlp\.up_proj\.weight": "up",
    r"mlp\.(?:down_proj|fc2|dense_4h_to_h)\.weight": "down",
}
_EXPERT_NAMES = {"w1": "gate", "w3": "up", "w2": "down", "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}


def _whole(role: Role, shape: tuple[int, int]) -> Part:
    return Part(role, shape, lambda t: t, lambda d: d)


def _rows(role: Role, start: int, stop: int, cols: int, expert: int | None = None) -> Part:
    if expert is None:
        return Part(role, (stop - start, cols), lambda t: t[start:stop], lambda d: d)
    return Part(role, (stop - start, cols), lambda t: t[expert, start:stop], lambda d: d)


def parts(name: str, shape: tuple[int, ...], dims: Dims) -> list[Part]:
    """The fingerprinted roles inside checkpoint tensor `name` of `shape` (empty: not fingerprinted)."""
    found = re.search(_LAYER + r"(?P<rest>.+)$", name)
    if found is None:
        return []
    layer, rest = int(found["layer"]), found["rest"]
    for pattern, role in _PLAIN.items():
        if re.fullmatch(pattern, rest) and len(shape) == 2:
            return [_whole(Role(layer, role), (shape[0], shape[1]))]
    if re.fullmatch(r"self_attn\.qkv_proj\.weight", rest) and len(shape) == 2:  # Phi-3: q, k, v rows
        q, kv = dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim
        return [_rows(Role(layer, "q"), 0, q, shape[1]), _rows(Role(layer, "k"), q, q + kv, shape[1]),
                _rows(Role(layer, "v"), q + kv, q + 2 * kv, shape[1])]
    if re.fullmatch(r"attention\.query_key_value\.weight", rest) and len(shape) == 2:  # GPT-NeoX
        h, hd, cols = dims.heads, dims.head_dim, shape[1]
        return [Part(Role(layer, r), (h * hd, cols),
                     (lambda t, i=i: t.view(h, 3, hd, cols)[:, i]),
                     (lambda d: d.reshape(h, hd, cols)))
                for i, r in enumerate(("q", "k", "v"))]
    if re.fullmatch(r"mlp\.gate_up_proj\.weight", rest) and len(shape) == 2:  # Phi-3: gate rows, up rows
        half = shape[0] // 2
        return [_rows(Role(layer, "gate"), 0, half, shape[1]), _rows(Role(layer, "up"), half, shape[0], shape[1])]
    expert = re.fullmatch(r"(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(w1|w2|w3|gate_proj|up_proj|down_proj)"
                          r"\.weight", rest)
    if expert and len(shape) == 2:
        return [_whole(Role(layer, _EXPERT_NAMES[expert[2]], int(expert[1])), (shape[0], shape[1]))]
    shared = re.fullmatch(r"mlp\.shared_experts?\.(gate_proj|up_proj|down_proj)\.weight", rest)
    if shared and len(shape) == 2:
        return [_whole(Role(layer, _EXPERT_NAMES[shared[1]], "shared"), (shape[0], shape[1]))]
    if re.fullmatch(r"mlp\.experts\.gate_up_proj", rest) and len(shape) == 3:  # packed [E, 2I, H]
        half = shape[1] // 2
        out: list[Part] = []
        for e in range(shape[0]):
            out.append(_rows(Role(layer, "gate", e), 0, half, shape[2], e))
            out.append(_rows(Role(layer, "up", e), half, shape[1], shape[2], e))
        return out
    if re.fullmatch(r"mlp\.experts\.down_proj", rest) and len(shape) == 3:  # packed [E, H, I]
        return [_rows(Role(layer, "down", e), 0, shape[1], shape[2], e) for e in range(shape[0])]
    return []


def llama_name(role: Role, prefix: str = "model.layers") -> str:
    """The Llama-layout tensor name of a dense role (what alignment reads)."""
    attn = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
    mlp = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
    if role.expert is not None:
        raise ValueError("llama_name is for dense roles")
    if role.name in attn:
        return f"{prefix}.{role.layer}.self_attn.{attn[role.name]}.weight"
    return f"{prefix}.{role.layer}.mlp.{mlp[role.name]}.weight"
