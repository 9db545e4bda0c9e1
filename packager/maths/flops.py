"""The FLOPs model: what one prefilled token computes in the MLPs and attention, from safetensors headers.

Prefill is bound by arithmetic, not by bytes: every token of the prompt multiplies through every weight
matrix. The bytes model (`packager.maths.sizing`) predicts decode; this one predicts prefill.
docs/INTERFACE.md ("The FLOPs model") states what is counted:

- every matrix multiply by a weight: 2 × (rows × columns) per token for each 2-D floating tensor other
  than the input-embedding table and the LM head (attention projections, gate/up/down, a release's
  `in_proj` and Θ); a routed expert's matrices count with the share k/E of tokens routed to it;
- attention itself: per layer and token, 2 × heads × head_dim multiply-adds per attended position for
  the scores and as many for the weighted sum of values, with a causal prompt of `length` tokens
  attending on average (length + 1) / 2 positions (a sliding-window layer at most its window).

Not counted: the input-embedding lookup, the LM head (in a prefill, transformers computes logits for
the last token only when asked to, as `unswift bench` does), norms, rotary embeddings, softmax,
activations and the release's feature build (elementwise work per channel and term, which is what
`prefill_overhead` = measured / predicted then shows).

    predicted_prefill_slowdown = release FLOPs per prefilled token / source FLOPs per prefilled token
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from packager.maths.sizing import INPUT_EMBEDDING, LM_HEAD, ROUTED_EXPERT, TensorSpec


def _get(config, key: str, default=None):
    value = config.get(key, default) if isinstance(config, Mapping) else getattr(config, key, default)
    return default if value is None else value


@dataclass(frozen=True)
class TokenFlops:
    """Floating-point operations of one prefilled token: weight matrix multiplies and attention."""

    matmul: int
    attention: int
    length: int

    @property
    def total(self) -> int:
        return self.matmul + self.attention

    def to_json(self) -> dict:
        return {"matmul_flops": self.matmul, "attention_flops": self.attention, "total_flops": self.total,
                "length": self.length}


def routed_fraction(config) -> float:
    """Share of a mixture-of-experts block's routed experts each token runs through (k/E; 1.0 if dense)."""
    experts = _get(config, "num_local_experts") or _get(config, "num_experts")
    top_k = _get(config, "num_experts_per_tok") or _get(config, "top_k")
    if not experts or not top_k:
        return 1.0
    return min(top_k / experts, 1.0)


def attention_flops(config, *, length: int) -> int:
    """Scores and weighted values of every attention layer for one token of a causal prompt of `length`."""
    layers = int(_get(config, "num_hidden_layers"))
    heads = int(_get(config, "num_attention_heads"))
    head_dim = int(_get(config, "head_dim", 0) or _get(config, "hidden_size") // heads)
    window = _get(config, "sliding_window")
    layer_types = list(_get(config, "layer_types", []) or [])
    total = 0.0
    for layer in range(layers):
        kind = layer_types[layer] if layer < len(layer_types) else "full_attention"
        attended = (length + 1) / 2
        if kind == "sliding_attention" and window:
            attended = min(attended, float(window))
        total += 2 * 2 * heads * head_dim * attended  # q·k for each position, then the weighted sum of v
    return int(round(total))


def token_flops(tensors: Mapping[str, TensorSpec], config, *, length: int) -> TokenFlops:
    """FLOPs of one token of a `length`-token prefill in the MLPs and attention (docs/INTERFACE.md)."""
    share = routed_fraction(config)
    matmul = 0.0
    for name, spec in tensors.items():
        if len(spec.shape) < 2 or not spec.floating or INPUT_EMBEDDING.search(name) or LM_HEAD.search(name):
            continue
        flops = 2.0 * spec.numel  # packed experts [E, rows, columns]: every expert's matrix
        matmul += flops * share if ROUTED_EXPERT.search(name) else flops
    return TokenFlops(int(round(matmul)), attention_flops(config, length=length), length)


def predicted_prefill_slowdown(release: Mapping[str, TensorSpec], source: Mapping[str, TensorSpec], config, *,
                               length: int) -> float:
    """Release FLOPs per prefilled token / source FLOPs per prefilled token (same prompt length)."""
    return token_flops(release, config, length=length).total / token_flops(source, config, length=length).total
