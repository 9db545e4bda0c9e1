"""Align a suspect to the source: undo every exact function-preserving reparametrisation.

A laundering tool can change every weight of a transformer without changing its function. All such
changes used in practice are linear gauges with few parameters, and with the source at hand each is a
small least-squares problem:

    residual stream   h' = s·Q h (Q orthogonal), RMSNorm weights folded into the next linear layers:
                      E' = s E Qᵀ, W'_in·diag(γ') = W_in·diag(γ)·Qᵀ, W'_out = s Q W_out
                      -> orthogonal Procrustes on the embedding and LM head (rows = tokens: fixed).
    attention heads   permutation of KV groups, and of query heads inside a group
                      -> Hungarian assignment on gauge-invariant costs.
    rotary q/k        per KV group and frequency pair, q ← c·e^{iφ} q, k ← c⁻¹·e^{iφ} k (complex form
                      of RoPE's rotate-half pairs; commutes with every position's rotation)
                      -> closed form from the complex inner products.
    value/output      per KV group, V ← A V, O_j ← O_j A⁻¹ for the group's query heads
                      -> Sylvester equation A·VVᵀ + (Σ O'ᵀO')·A = V'Vᵀ + Σ O'ᵀO.
    MLP channels      permutation, and up row × a with down column × 1/a (a < 0: the sign flip;
                      also the per-channel gauge a TaylorMLP rebuild leaves)
                      -> matching on cosines, then a closed-form scale per channel.

Every fitted gauge (residual rotation, rotary phases/scales per KV group, V/O mixing per group, MLP
channel scales per layer) is undone only when the fit explains more than half of the residual energy it
is fitted on, so an unlaundered or merely quantised suspect is never "realigned" by noise, and no fit
absorbs the pattern where there is no gauge to undo; permutations are undone when the assignment
differs from the identity.

Everything here sees only the source and the suspect, never a recipient's pattern: that is what keeps
the score's null distribution exact (`score`).

A model rebuilt from a TaylorMLP release has one more per-channel freedom: the rebuild recovers each
gate row up to the scale of its series' width (`kerckhoffs` estimates it), so the gate row of every
channel is also re-scaled by least squares, under the same "explains more than half" rule.

Supported (`SUPPORTED`, tested): decoders with RMSNorm, full rotary, dense MLPs and the Llama layout
(Llama, Mistral, Qwen2, Qwen3). Not yet: LayerNorm families (Phi, GPT-NeoX: a rotation must keep the
all-ones direction), partial rotary, sandwich norms (Gemma 2/3), MoE expert permutation; `check_supported`
refuses them rather than guess.

This module is long because every gauge's least-squares solution is written out next to the others, in
the order alignment applies them; splitting it would scatter one derivation over several files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from packager.maths.fingerprint.assignment import hungarian, match_by_similarity

#: A gauge fitted by least squares is undone when it explains more than this share of the residual.
EXPLAINED_TO_UNDO = 0.5
#: `config.model_type`s whose every gauge alignment undoes (and the tests cover).
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


def check_supported(config) -> None:
    """Raise ValueError naming the supported families when `config`'s family cannot be aligned yet."""
    model_type = str(getattr(config, "model_type", ""))
    partial = float(getattr(config, "partial_rotary_factor", None) or 1.0)
    if model_type not in SUPPORTED or partial != 1.0:
        raise ValueError(f"tracing '{model_type}' models is not supported yet (alignment undoes the "
                         f"reparametrisations of {', '.join(SUPPORTED)} only)")


@dataclass(frozen=True)
class Geometry:
    """What alignment needs to know about the architecture."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    rotary_dim: int
    norm_offset: float = 0.0  # Gemma multiplies by (1 + w)
    qk_norm: bool = False  # Qwen3: per-head RMSNorm of q and k before RoPE
    prefix: str = "model.layers"

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    @classmethod
    def from_config(cls, config) -> Geometry:
        heads = int(config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or int(config.hidden_size) // heads)
        partial = float(getattr(config, "partial_rotary_factor", None) or 1.0)
        model_type = str(getattr(config, "model_type", ""))
        return cls(
            layers=int(config.num_hidden_layers), hidden=int(config.hidden_size), heads=heads,
            kv_heads=int(getattr(config, "num_key_value_heads", None) or heads), head_dim=head_dim,
            rotary_dim=int(head_dim * partial), norm_offset=1.0 if model_type.startswith("gemma") else 0.0,
            qk_norm=model_type in ("qwen3", "qwen3_moe", "gemma3_text"),
        )


# -- reading ------------------------------------------------------------------------------------------

def _get(state: Mapping[str, torch.Tensor], *names: str) -> torch.Tensor | None:
    for name in names:
        if name in state:
            return state[name].double()
    return None


def read_layer(state: Mapping[str, torch.Tensor], layer: int, geom: Geometry) -> dict[str, torch.Tensor]:
    """One decoder layer as float64 roles q, k, v, o, gate, up, down plus effective norm multipliers.

    Reads the Llama layout and Phi-3's fused projections (`state` may be lazy: one tensor at a time).
    """
    p = f"{geom.prefix}.{layer}."
    out: dict[str, torch.Tensor] = {}
    qkv = _get(state, p + "self_attn.qkv_proj.weight")
    if qkv is not None:
        nq, nkv = geom.heads * geom.head_dim, geom.kv_heads * geom.head_dim
        out["q"], out["k"], out["v"] = qkv[:nq], qkv[nq:nq + nkv], qkv[nq + nkv:]
    else:
        for r in ("q", "k", "v"):
            out[r] = _get(state, p + f"self_attn.{r}_proj.weight")
    out["o"] = _get(state, p + "self_attn.o_proj.weight")
    gate_up = _get(state, p + "mlp.gate_up_proj.weight")
    if gate_up is not None:
        out["gate"], out["up"] = gate_up.chunk(2, 0)
    else:
        out["gate"] = _get(state, p + "mlp.gate_proj.weight")
        out["up"] = _get(state, p + "mlp.up_proj.weight")
    out["down"] = _get(state, p + "mlp.down_proj.weight")
    missing = [r for r, t in out.items() if t is None]
    if missing:
        raise KeyError(f"layer {layer}: no weights for {missing} in a layout alignment reads")
    attn = _get(state, p + "input_layernorm.weight")
    mlp = _get(state, p + "pre_feedforward_layernorm.weight", p + "post_attention_layernorm.weight")
    out["attn_norm"] = geom.norm_offset + attn
    out["mlp_norm"] = geom.norm_offset + mlp
    return out


def read_anchor(state: Mapping[str, torch.Tensor], geom: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding [V, d], LM head with the final norm folded in [V, d]), float64."""
    embed = _get(state, "model.embed_tokens.weight")
    head = _get(state, "lm_head.weight")
    if head is None:
        head = embed
    norm = geom.norm_offset + _get(state, "model.norm.weight")
    return embed, head * norm


# -- the residual stream -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ResidualGauge:
    """h' = s·Q h, fitted on the embedding and LM head."""

    q: torch.Tensor
    s: float
    explained: float
    undone: bool


def fit_residual(source_anchor: tuple[torch.Tensor, torch.Tensor],
                 suspect_anchor: tuple[torch.Tensor, torch.Tensor]) -> ResidualGauge:
    """Orthogonal Procrustes (with one scale) of the suspect's embedding/LM head onto the source's.

    Rows of the embedding are tokens, which no gauge can move, so they pin Q down: with E' = s·E·Qᵀ,
    Q = U Vᵀ from the SVD of E'ᵀE (+ the LM head's cross term) and s = <E', E Qᵀ> / |E|².
    """
    (e, h), (e2, h2) = source_anchor, suspect_anchor
    n = min(e.shape[0], e2.shape[0])
    e, e2, h, h2 = e[:n], e2[:n], h[:n], h2[:n]
    cross = e2.T @ e + h2.T @ h
    u, _, vt = torch.linalg.svd(cross)
    q = u @ vt
    rotated = e @ q.T
    s = float((e2 * rotated).sum() / (e * e).sum())
    before = float((e2 - e).pow(2).sum() + (h2 - h).pow(2).sum())
    after = float((e2 - s * rotated).pow(2).sum() + (h2 - h @ q.T).pow(2).sum())
    explained = 0.0 if before == 0 else 1.0 - after / before
    return ResidualGauge(q, s, explained, explained > EXPLAINED_TO_UNDO)


# -- attention ------------------------------------------------------------------------------------------

def _complex(heads: torch.Tensor, rd: int) -> torch.Tensor:
    """[n, hd, d] real head blocks -> [n, rd/2, d] complex: RoPE's (i, i + rd/2) pairs as one number."""
    half = rd // 2
    return torch.complex(heads[:, :half], heads[:, half:rd])


def _pair_fit_residual(src: torch.Tensor, sus: torch.Tensor) -> torch.Tensor:
    """[n_sus, n_src] residual energy of fitting each suspect head by a free complex scalar per pair."""
    ip = torch.einsum("bhd,ahd->abh", src.conj(), sus)  # [n_sus, n_src, pairs]
    n_src = src.abs().pow(2).sum(-1).clamp_min(1e-300)  # [n_src, pairs]
    sus_energy = sus.abs().pow(2).sum((-1, -2))  # [n_sus]
    return sus_energy[:, None] - (ip.abs().pow(2) / n_src[None]).sum(-1)


def _span_residual(basis: torch.Tensor, mats: torch.Tensor, side: str) -> torch.Tensor:
    """[n_mats, n_basis] energy of each matrix outside each basis's row (or column) space."""
    energy = mats.pow(2).sum((-1, -2))
    if side == "row":  # basis [n, d, hd] orthonormal columns spanning rows; mats [m, hd, d]
        proj = torch.einsum("mhd,ndk->mnhk", mats, basis)
    else:  # basis [n, d, hd] spanning columns; mats [m, d, hd]
        proj = torch.einsum("ndk,mdh->mnkh", basis, mats)
    return energy[:, None] - proj.pow(2).sum((-1, -2))


def _orth(mats: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of each [d, hd] matrix's column space."""
    return torch.linalg.qr(mats).Q


def _sylvester(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """A with A·X + Y·A = C, X and Y symmetric positive semi-definite."""
    lx, ux = torch.linalg.eigh(x)
    ly, uy = torch.linalg.eigh(y)
    ct = uy.T @ c @ ux
    return uy @ (ct / (ly[:, None] + lx[None, :]).clamp_min(1e-300)) @ ux.T


@dataclass
class LayerReport:
    """What was undone in one layer (numbers for the trace report)."""

    kv_permuted: bool = False
    q_permuted: bool = False
    rope_undone: int = 0  # KV groups whose rotary gauge was undone
    rope_max_phase: float = 0.0
    rope_max_log_scale: float = 0.0
    vo_explained: list[float] = field(default_factory=list)
    vo_undone: int = 0
    mlp_permuted: bool = False
    mlp_scaled: bool = False
    mlp_flipped: int = 0
    mlp_max_log_scale: float = 0.0
    gate_rescaled: bool = False


def align_attention(src: dict[str, torch.Tensor], sus: dict[str, torch.Tensor], geom: Geometry,
                    report: LayerReport) -> dict[str, torch.Tensor]:
    """q, k, v, o of the suspect in the source's head order and gauge (all matrices already folded)."""
    nh, nkv, hd, g, rd = geom.heads, geom.kv_heads, geom.head_dim, geom.group, geom.rotary_dim
    d = src["q"].shape[1]
    sq, sk, sv = (src[r].reshape(n, hd, d) for r, n in (("q", nh), ("k", nkv), ("v", nkv)))
    tq, tk, tv = (sus[r].reshape(n, hd, d) for r, n in (("q", nh), ("k", nkv), ("v", nkv)))
    so = src["o"].reshape(-1, nh, hd).permute(1, 0, 2)  # [nh, d, hd]
    to = sus["o"].reshape(-1, nh, hd).permute(1, 0, 2)

    # Costs that no gauge changes: complex-scalar fit per rotary pair (q, k), span residuals (v, o).
    def qk_cost(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        cost = _pair_fit_residual(_complex(a, rd), _complex(b, rd)) if not geom.qk_norm else \
            _scale_fit_residual(a, b)
        if rd < hd:  # pass-through dims: compared as they are
            cost = cost + (b[:, None, rd:] - a[None, :, rd:]).pow(2).sum((-1, -2))
        return cost

    cost_q = qk_cost(sq, tq)  # [nh_sus, nh_src]
    cost_k = qk_cost(sk, tk)
    cost_v = _span_residual(_orth(sv.transpose(1, 2)), tv, "row")  # [nkv_sus, nkv_src]
    cost_o = _span_residual(_orth(so), to, "col")  # [nh_sus, nh_src]
    head_cost = cost_q + cost_o
    inner: dict[tuple[int, int], torch.Tensor] = {}
    group_cost = cost_k + cost_v
    for a in range(nkv):
        for b in range(nkv):
            sub = head_cost[a * g:(a + 1) * g, b * g:(b + 1) * g]
            col = hungarian(sub) if g > 1 else torch.zeros(1, dtype=torch.long)
            inner[(a, b)] = col
            group_cost[a, b] = group_cost[a, b] + sub[torch.arange(g), col].sum()
    kv_col = hungarian(group_cost)  # suspect group a -> source group kv_col[a]
    kv_of_src = torch.empty(nkv, dtype=torch.long)
    kv_of_src[kv_col] = torch.arange(nkv)
    q_of_src = torch.empty(nh, dtype=torch.long)
    for b in range(nkv):  # source group b is suspect group a
        a = int(kv_of_src[b])
        col = inner[(a, b)]  # suspect head a*g+i -> source head b*g+col[i]
        for i in range(g):
            q_of_src[b * g + int(col[i])] = a * g + i
    report.kv_permuted = bool((kv_of_src != torch.arange(nkv)).any())
    report.q_permuted = bool((q_of_src != torch.arange(nh)).any())
    tq, to, tk, tv = tq[q_of_src], to[q_of_src], tk[kv_of_src], tv[kv_of_src]

    # Rotary gauge per KV group and pair: q' = c e^{iφ} q, k' = c⁻¹ e^{iφ} k.
    tq, tk = tq.clone(), tk.clone()
    if geom.qk_norm:
        for heads_src, heads_sus in ((sq, tq), (sk, tk)):  # a per-head scale is absorbed by the norm
            scale = (heads_src * heads_sus).sum((1, 2)) / heads_src.pow(2).sum((1, 2)).clamp_min(1e-300)
            heads_sus /= scale[:, None, None]
    else:
        zq_s, zq_t = _complex(sq, rd).reshape(nkv, g, rd // 2, d), _complex(tq, rd).reshape(nkv, g, rd // 2, d)
        zk_s, zk_t = _complex(sk, rd), _complex(tk, rd)
        iq = (zq_s.conj() * zq_t).sum((1, 3))  # [nkv, pairs]
        nq = zq_s.abs().pow(2).sum((1, 3)).clamp_min(1e-300)
        ik = (zk_s.conj() * zk_t).sum(-1)
        nk = zk_s.abs().pow(2).sum(-1).clamp_min(1e-300)
        cq, ck = iq.abs() / nq, ik.abs() / nk
        c = (cq / ck.clamp_min(1e-300)).sqrt().where((cq > 0) & (ck > 0), torch.ones_like(cq))
        u = iq / (nq * c) + ik * c / nk
        phase = (u / u.abs().clamp_min(1e-300)).where(u.abs() > 0, torch.ones_like(u))
        fq = zq_t * (phase.conj() / c)[:, None, :, None]
        fk = zk_t * (phase.conj() * c)[:, :, None]
        before = (zq_t - zq_s).abs().pow(2).sum((1, 2, 3)) + (zk_t - zk_s).abs().pow(2).sum((1, 2))
        after = (fq - zq_s).abs().pow(2).sum((1, 2, 3)) + (fk - zk_s).abs().pow(2).sum((1, 2))
        undo = after < (1 - EXPLAINED_TO_UNDO) * before  # per KV group
        report.rope_undone = int(undo.sum())
        if bool(undo.any()):
            report.rope_max_phase = float(phase[undo].angle().abs().max())
            report.rope_max_log_scale = float(c[undo].log().abs().max())
        zq_t = torch.where(undo[:, None, None, None], fq, zq_t)
        zk_t = torch.where(undo[:, None, None], fk, zk_t)
        half = rd // 2
        tq = tq.reshape(nkv, g, hd, d)
        tq[:, :, :half], tq[:, :, half:rd] = zq_t.real, zq_t.imag
        tk[:, :half], tk[:, half:rd] = zk_t.real, zk_t.imag
        tq = tq.reshape(nh, hd, d)

    # Value/output mixing per KV group: V' = A V, O'_j = O_j A⁻¹.
    tv, to = tv.clone(), to.clone()
    for b in range(nkv):
        v, v2 = sv[b], tv[b]
        o, o2 = so[b * g:(b + 1) * g], to[b * g:(b + 1) * g]  # [g, d, hd]
        x = v @ v.T
        y = torch.einsum("gdh,gdk->hk", o2, o2)
        c = v2 @ v.T + torch.einsum("gdh,gdk->hk", o2, o)
        a = _sylvester(x, y, c)
        before = float((v2 - v).pow(2).sum() + (o2 - o).pow(2).sum())
        after = float((v2 - a @ v).pow(2).sum() + (o2 @ a - o).pow(2).sum())
        explained = 0.0 if before == 0 else 1.0 - after / before
        report.vo_explained.append(explained)
        if explained > EXPLAINED_TO_UNDO:
            try:
                tv[b] = torch.linalg.solve(a, v2)
            except RuntimeError:  # singular: not a gauge of this source
                continue
            report.vo_undone += 1
            to[b * g:(b + 1) * g] = o2 @ a
    return {"q": tq.reshape(nh * hd, d), "k": tk.reshape(nkv * hd, d), "v": tv.reshape(nkv * hd, d),
            "o": to.permute(1, 0, 2).reshape(-1, nh * hd)}


def _scale_fit_residual(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[n_b, n_a] residual of fitting each head of b by a real scale of a head of a (qk-norm models)."""
    ip = torch.einsum("ahd,bhd->ba", a, b)
    na = a.pow(2).sum((1, 2)).clamp_min(1e-300)
    return b.pow(2).sum((1, 2))[:, None] - ip.pow(2) / na[None]


# -- MLP ----------------------------------------------------------------------------------------------

def _unit_rows(m: torch.Tensor) -> torch.Tensor:
    return m / m.norm(dim=1, keepdim=True).clamp_min(1e-300)


def align_mlp(src: dict[str, torch.Tensor], sus: dict[str, torch.Tensor], report: LayerReport
              ) -> dict[str, torch.Tensor]:
    """gate, up, down of the suspect in the source's channel order, per-channel scale and sign undone."""
    gate, up, down = sus["gate"], sus["up"], sus["down"]
    diag = (_unit_rows(gate) * _unit_rows(src["gate"])).sum(1).abs()
    if float((diag > 0.5).double().mean()) < 0.99:  # not the identity: match channels
        sim = (_unit_rows(gate) @ _unit_rows(src["gate"]).T).abs()
        sim += (_unit_rows(up) @ _unit_rows(src["up"]).T).abs()
        sim += (_unit_rows(down.T) @ _unit_rows(src["down"].T).T).abs()
        col = match_by_similarity(sim)  # suspect channel i -> source channel col[i]
        of_src = torch.empty_like(col)
        of_src[col] = torch.arange(col.numel())
        if bool((of_src != torch.arange(col.numel())).any()):
            report.mlp_permuted = True
            gate, up, down = gate[of_src], up[of_src], down[:, of_src]
    # up row × a, down column × 1/a: a from each side by least squares, combined geometrically.
    su, sd = src["up"], src["down"]
    a_up = (up * su).sum(1) / su.pow(2).sum(1).clamp_min(1e-300)
    inv_down = (down * sd).sum(0) / sd.pow(2).sum(0).clamp_min(1e-300)  # ≈ 1/a
    magnitude = (a_up.abs() / inv_down.abs().clamp_min(1e-300)).sqrt()
    ok = (a_up != 0) & (inv_down != 0) & magnitude.isfinite()
    a = torch.where(ok, torch.sign(a_up) * magnitude, torch.ones_like(a_up))
    new_up, new_down = up / a[:, None], down * a[None, :]
    before = float((up - su).pow(2).sum() + (down - sd).pow(2).sum())
    after = float((new_up - su).pow(2).sum() + (new_down - sd).pow(2).sum())
    if after < (1 - EXPLAINED_TO_UNDO) * before:
        report.mlp_scaled = True
        report.mlp_flipped = int((a < 0).sum())
        report.mlp_max_log_scale = float(a.abs().log().abs().max())
        up, down = new_up, new_down
    return {"gate": _rescale_gate(gate, src["gate"], report), "up": up, "down": down}


def _rescale_gate(gate: torch.Tensor, source: torch.Tensor, report: LayerReport) -> torch.Tensor:
    """Each gate row re-scaled (with sign) onto the source's when that explains most of the residual:
    the width gauge a TaylorMLP rebuild leaves (not a gauge of a plain model, where it is never needed)."""
    scale = (gate * source).sum(1) / gate.pow(2).sum(1).clamp_min(1e-300)
    scale = torch.where(scale.isfinite() & (scale != 0), scale, torch.ones_like(scale))
    rescaled = gate * scale[:, None]
    before = float((gate - source).pow(2).sum())
    after = float((rescaled - source).pow(2).sum())
    if before == 0 or after >= (1 - EXPLAINED_TO_UNDO) * before:
        return gate
    report.gate_rescaled = True
    return rescaled


# -- a whole model ------------------------------------------------------------------------------------

INPUT_SIDE = {"q": "attn_norm", "k": "attn_norm", "v": "attn_norm", "gate": "mlp_norm", "up": "mlp_norm"}


def fold(layer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The seven projections with the norm multipliers folded into the input-side ones."""
    return {r: layer[r] * layer[INPUT_SIDE[r]][None, :] if r in INPUT_SIDE else layer[r]
            for r in ("q", "k", "v", "o", "gate", "up", "down")}


def align_layer(src: dict[str, torch.Tensor], sus: dict[str, torch.Tensor], gauge: ResidualGauge,
                geom: Geometry) -> tuple[dict[str, torch.Tensor], LayerReport]:
    """The suspect's seven projections in the source's coordinates (float64), and what was undone.

    Both layers are folded (norm multipliers into the input-side matrices), the residual gauge is
    undone on the suspect, heads and channels aligned, and the result unfolded with the *source's*
    norms, so that it is directly comparable to the source weights the patterns were added to.
    """
    fs, ft = fold(src), fold(sus)
    if gauge.undone:
        for r in ft:
            ft[r] = ft[r] @ gauge.q if r in INPUT_SIDE else gauge.q.T @ ft[r] / gauge.s
    report = LayerReport()
    out = align_attention(fs, ft, geom, report)
    out.update(align_mlp(fs, ft, report))
    for r, n in INPUT_SIDE.items():
        norm = src[n]
        safe = norm.abs() > 1e-6 * norm.abs().max()
        out[r] = torch.where(safe[None, :], out[r] / torch.where(safe, norm, 1.0)[None, :], src[r])
    return out, report


def similarity(aligned: dict[str, torch.Tensor], source: dict[str, torch.Tensor]) -> dict[str, float]:
    """Cosine between the aligned suspect and the source, per role: how much of the source it keeps."""
    return {r: float((aligned[r] * source[r]).sum() / (aligned[r].norm() * source[r].norm()).clamp_min(1e-300))
            for r in aligned}
