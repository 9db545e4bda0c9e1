"""What a leaker can do to a copy: exact reparametrisations, casts, quantisation, pruning, averaging.

These are the transformations the trace must survive, written once so that tests and
benchmarks/fingerprint_robustness.py apply exactly the same ones. Every reparametrisation here is an
exact gauge of a Llama-layout decoder (a test checks the logits are unchanged); parameters come from a
torch.Generator only.

State dicts use Llama names (`model.layers.N.self_attn.q_proj.weight`, ...). Functions return new
dicts and never modify their input.
"""

from __future__ import annotations

import math

import torch

from packager.maths.fingerprint.alignment import INPUT_SIDE, Geometry

_ATTN = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj"}
_MLP = {"gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
_NAMES = {**_ATTN, **_MLP}
_NORMS = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}


def _w(geom: Geometry, layer: int, role: str) -> str:
    return f"{geom.prefix}.{layer}.{_NAMES[role]}.weight"


def _n(geom: Geometry, layer: int, norm: str) -> str:
    return f"{geom.prefix}.{layer}.{_NORMS[norm]}.weight"


def _cast_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.to(like.dtype).contiguous()


# -- residual stream -----------------------------------------------------------------------------------

def fold_norms(state: dict[str, torch.Tensor], geom: Geometry) -> dict[str, torch.Tensor]:
    """Norm multipliers folded into the following linear layers (norm weights become neutral).

    The LM head gets the final norm and is untied from the embedding, as any folding tool must do.
    """
    out = dict(state)
    neutral = 1.0 - geom.norm_offset
    for layer in range(geom.layers):
        for role, norm in INPUT_SIDE.items():
            gamma = geom.norm_offset + state[_n(geom, layer, norm)].double()
            w = state[_w(geom, layer, role)]
            out[_w(geom, layer, role)] = _cast_like(w.double() * gamma[None, :], w)
        for norm in _NORMS:
            out[_n(geom, layer, norm)] = torch.full_like(state[_n(geom, layer, norm)], neutral)
    head = state.get("lm_head.weight", state["model.embed_tokens.weight"])
    gamma = geom.norm_offset + state["model.norm.weight"].double()
    out["lm_head.weight"] = _cast_like(head.double() * gamma[None, :], head)
    out["model.norm.weight"] = torch.full_like(state["model.norm.weight"], neutral)
    return out


def random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


def rotate_residual(state: dict[str, torch.Tensor], geom: Geometry, q: torch.Tensor, s: float = 1.0
                    ) -> dict[str, torch.Tensor]:
    """h' = s·Q h: folds the norms, then E' = s E Qᵀ, W_in' = W_in Qᵀ, W_out' = s Q W_out, head' = head Qᵀ."""
    out = fold_norms(state, geom)
    e = out["model.embed_tokens.weight"]
    out["model.embed_tokens.weight"] = _cast_like(s * e.double() @ q.T, e)
    out["lm_head.weight"] = _cast_like(out["lm_head.weight"].double() @ q.T, out["lm_head.weight"])
    for layer in range(geom.layers):
        for role in _NAMES:
            name = _w(geom, layer, role)
            w = out[name].double()
            out[name] = _cast_like(w @ q.T if role in INPUT_SIDE else s * q @ w, out[name])
    return out


# -- attention -----------------------------------------------------------------------------------------

def permute_heads(state: dict[str, torch.Tensor], geom: Geometry, layer: int, kv_order: torch.Tensor,
                  q_order: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Suspect KV group a = source group kv_order[a]; its query head i = source head kv_order[a]·g + q_order[a][i]."""
    nh, nkv, hd, g = geom.heads, geom.kv_heads, geom.head_dim, geom.group
    src_of = torch.tensor([int(kv_order[a]) * g + int(q_order[a][i]) for a in range(nkv) for i in range(g)])
    out = dict(state)
    q, k, v, o = (state[_w(geom, layer, r)] for r in "qkvo")
    out[_w(geom, layer, "q")] = q.reshape(nh, hd, -1)[src_of].reshape(q.shape).contiguous()
    out[_w(geom, layer, "k")] = k.reshape(nkv, hd, -1)[kv_order].reshape(k.shape).contiguous()
    out[_w(geom, layer, "v")] = v.reshape(nkv, hd, -1)[kv_order].reshape(v.shape).contiguous()
    out[_w(geom, layer, "o")] = o.reshape(-1, nh, hd)[:, src_of].reshape(o.shape).contiguous()
    return out


def rope_gauge(state: dict[str, torch.Tensor], geom: Geometry, layer: int, phase: torch.Tensor,
               scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per KV group and rotary pair: q ← c·e^{iφ} q (every query head of the group), k ← c⁻¹·e^{iφ} k."""
    nh, nkv, hd, g, half = geom.heads, geom.kv_heads, geom.head_dim, geom.group, geom.rotary_dim // 2
    out = dict(state)
    for role, factor, count in (("q", scale, nh), ("k", 1.0 / scale, nkv)):
        w = state[_w(geom, layer, role)]
        heads = w.double().reshape(count, hd, -1).clone()
        z = torch.complex(heads[:, :half], heads[:, half:2 * half])
        mult = torch.polar(factor.double(), phase.double())  # [nkv, pairs]
        if role == "q":
            mult = mult.repeat_interleave(g, 0)
        z = z * mult[:, :, None]
        heads[:, :half], heads[:, half:2 * half] = z.real, z.imag
        out[_w(geom, layer, role)] = _cast_like(heads.reshape(w.shape), w)
    return out


def mix_values(state: dict[str, torch.Tensor], geom: Geometry, layer: int, mats: torch.Tensor
               ) -> dict[str, torch.Tensor]:
    """Per KV group a: V_a ← A_a V_a and O_j ← O_j A_a⁻¹ for its query heads (mats [nkv, hd, hd])."""
    nh, nkv, hd, g = geom.heads, geom.kv_heads, geom.head_dim, geom.group
    out = dict(state)
    v, o = state[_w(geom, layer, "v")], state[_w(geom, layer, "o")]
    vh = v.double().reshape(nkv, hd, -1)
    oh = o.double().reshape(-1, nh, hd).clone()
    vh = torch.einsum("aij,ajd->aid", mats.double(), vh)
    inv = torch.linalg.inv(mats.double()).repeat_interleave(g, 0)  # [nh, hd, hd]
    oh = torch.einsum("dhi,hij->dhj", oh, inv)
    out[_w(geom, layer, "v")] = _cast_like(vh.reshape(v.shape), v)
    out[_w(geom, layer, "o")] = _cast_like(oh.reshape(o.shape), o)
    return out


# -- MLP -----------------------------------------------------------------------------------------------

def mlp_gauge(state: dict[str, torch.Tensor], geom: Geometry, layer: int, order: torch.Tensor,
              scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """Suspect channel i = source channel order[i], with its up row × scale[i] and down column ÷ scale[i]."""
    out = dict(state)
    gate, up, down = (state[_w(geom, layer, r)] for r in ("gate", "up", "down"))
    out[_w(geom, layer, "gate")] = gate[order].contiguous()
    out[_w(geom, layer, "up")] = _cast_like(up[order].double() * scale.double()[:, None], up)
    out[_w(geom, layer, "down")] = _cast_like(down[:, order].double() / scale.double()[None, :], down)
    return out


def taylor_rebuild(state: dict[str, torch.Tensor], geom: Geometry, generator: torch.Generator,
                   rel_error: float = 1e-6) -> dict[str, torch.Tensor]:
    """A stand-in for release + the audit's rebuild: per-channel scale gauge on up/down, tiny error.

    The real rebuild recovers each expanded channel's down column up to the scale the series absorbed;
    its numerical error (float32 series coefficients) is modelled as relative Gaussian error.
    """
    out = dict(state)
    for layer in range(geom.layers):
        n = state[_w(geom, layer, "up")].shape[0]
        scale = torch.exp(torch.randn(n, generator=generator, dtype=torch.float64) * 0.5)
        out = mlp_gauge(out, geom, layer, torch.arange(n), scale)
        for role in ("up", "down", "gate"):
            name = _w(geom, layer, role)
            w = out[name].double()
            noise = torch.randn(w.shape, generator=generator, dtype=torch.float64) * rel_error
            out[name] = _cast_like(w * (1 + noise), out[name])
    return out


def random_laundering(state: dict[str, torch.Tensor], geom: Geometry, generator: torch.Generator
                      ) -> dict[str, torch.Tensor]:
    """Every reparametrisation at once, with random parameters: rotation (and scale) of the residual
    stream with norms folded, KV-group and query-head permutations, rotary phases and scales, value/
    output mixing, MLP channel permutation, signs and scales."""
    def rand(*shape):
        return torch.rand(*shape, generator=generator, dtype=torch.float64)

    # s = 1: a residual scale is a gauge only up to RMSNorm's eps (align.py still fits one).
    out = rotate_residual(state, geom, random_orthogonal(geom.hidden, generator))
    nkv, g, hd, half = geom.kv_heads, geom.group, geom.head_dim, geom.rotary_dim // 2
    for layer in range(geom.layers):
        out = permute_heads(out, geom, layer, torch.randperm(nkv, generator=generator),
                            [torch.randperm(g, generator=generator) for _ in range(nkv)])
        out = rope_gauge(out, geom, layer, (rand(nkv, half) * 2 - 1) * math.pi, torch.exp(rand(nkv, half) * 2 - 1))
        mats = torch.stack([random_orthogonal(hd, generator) * torch.exp(rand(hd) - 0.5)[None, :]
                            for _ in range(nkv)])
        out = mix_values(out, geom, layer, mats)
        n = state[_w(geom, layer, "up")].shape[0]
        signs = torch.where(rand(n) < 0.5, -1.0, 1.0).double()
        out = mlp_gauge(out, geom, layer, torch.randperm(n, generator=generator),
                        signs * torch.exp(rand(n) * 2 - 1))
    return out


# -- noise ---------------------------------------------------------------------------------------------

def quantize_rtn(w: torch.Tensor, bits: int = 4, group: int = 32) -> torch.Tensor:
    """Symmetric round-to-nearest per group of `group` inputs (absmax scale), dequantised to w's dtype."""
    rows, cols = w.shape
    pad = (-cols) % group
    x = torch.nn.functional.pad(w.double(), (0, pad)).reshape(rows, -1, group)
    top = 2 ** (bits - 1) - 1
    scale = x.abs().amax(-1, keepdim=True) / top
    q = torch.where(scale > 0, (x / scale.clamp_min(1e-300)).round().clamp(-top - 1, top) * scale, 0.0)
    return q.reshape(rows, -1)[:, :cols].to(w.dtype)


def quantize_int8_rows(w: torch.Tensor) -> torch.Tensor:
    """int8 per output row (absmax), dequantised."""
    return quantize_rtn(w, bits=8, group=w.shape[1])


def prune_magnitude(w: torch.Tensor, fraction: float) -> torch.Tensor:
    """The `fraction` smallest-magnitude entries of w set to zero."""
    k = int(round(fraction * w.numel()))
    if k == 0:
        return w.clone()
    threshold = w.abs().flatten().kthvalue(k).values
    return torch.where(w.abs() <= threshold, torch.zeros_like(w), w)


def map_matrices(state: dict[str, torch.Tensor], fn, *, include_embeddings: bool = True
                 ) -> dict[str, torch.Tensor]:
    """fn applied to every 2-D floating tensor (the decoder's matrices, and embeddings/LM head if asked)."""
    out = {}
    for name, t in state.items():
        matrix = t.ndim == 2 and t.is_floating_point()
        embedding = name in ("model.embed_tokens.weight", "lm_head.weight")
        out[name] = fn(t) if matrix and (include_embeddings or not embedding) else t
    return out


def average(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The entrywise mean of several copies (collusion)."""
    out = {}
    for name in states[0]:
        stacked = torch.stack([s[name].double() for s in states])
        out[name] = stacked.mean(0).to(states[0][name].dtype)
    return out
