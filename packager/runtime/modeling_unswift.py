"""Models of an unswift (TaylorMLP) release: the base family with every MLP replaced by `TaylorMLP`.

Shipped verbatim inside each release. Top-level imports are the standard library, torch and
transformers only, as `trust_remote_code` users expect. The series is evaluated with one feature build
and one matrix multiply per MLP: no Python loop over terms, no host synchronisation, static shapes.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    GemmaForCausalLM,
    GemmaModel,
    LlamaForCausalLM,
    LlamaModel,
    MistralForCausalLM,
    MistralModel,
    Qwen2ForCausalLM,
    Qwen2Model,
    Qwen3ForCausalLM,
    Qwen3Model,
)
from transformers.activations import ACT2FN

from .configuration_unswift import (
    UnswiftGemmaConfig,
    UnswiftLlamaConfig,
    UnswiftMistralConfig,
    UnswiftQwen2Config,
    UnswiftQwen3Config,
)

#: The release format versions this loader understands.
SUPPORTED_FORMAT_VERSIONS = (1,)


def check_format(spec):
    """Refuse a release written in a format this loader does not know, naming what it would need."""
    if not spec:
        raise ValueError("config.json has no 'unswift' section: this folder is not an unswift release")
    version = spec.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ValueError(
            f"this release uses unswift format_version {version!r}, but its loader only reads "
            f"{list(SUPPORTED_FORMAT_VERSIONS)}; load it with the modeling_unswift.py of a tool that "
            f"writes format {version!r} (re-download the release's own files, or upgrade unswift)"
        )


class SeriesBasis(nn.Module):
    """Evaluates B_0..B_N at every expanded channel's normalised input in one broadcast operation.

    With `extrapolation == "linear"` each basis function is continued by its tangent outside
    [-1, 1], so inputs beyond the calibrated interval cannot make the polynomial blow up. The small
    constant vectors are rebuilt in `forward` (not stored as buffers) because transformers creates
    modules on the meta device and never loads non-persistent buffers.
    """

    def __init__(self, order, basis, extrapolation):
        super().__init__()
        if basis not in ("monomial", "chebyshev"):
            raise ValueError(f"unknown series basis {basis!r}: expected 'monomial' or 'chebyshev'")
        if extrapolation not in ("none", "linear"):
            raise ValueError(f"unknown extrapolation {extrapolation!r}: expected 'none' or 'linear'")
        self.order = order
        self.basis = basis
        self.extrapolation = extrapolation

    def forward(self, t):
        n = torch.arange(self.order + 1, device=t.device, dtype=t.dtype)
        t = t.unsqueeze(-1)
        inside = t.clamp(-1.0, 1.0) if self.extrapolation == "linear" else t
        if self.basis == "chebyshev":
            values = torch.cos(n * torch.acos(inside.clamp(-1.0, 1.0)))
            if self.extrapolation == "none":  # |t| > 1: |T_n(t)| = cosh(n acosh|t|), sign (-1)^n for t < 0
                outside = torch.cosh(n * torch.acosh(t.abs().clamp(min=1.0)))
                outside = outside * torch.where(t < 0, torch.cos(n * math.pi), 1.0)
                values = torch.where(t.abs() > 1.0, outside, values)
        else:
            values = inside.pow(n)
        if self.extrapolation == "linear":
            # Derivatives at the ends: T_n'(1) = n^2, T_n'(-1) = (-1)^(n+1) n^2; (t^n)' = n t^(n-1).
            slope = n * n if self.basis == "chebyshev" else n
            parity = 1.0 - 2.0 * torch.remainder(n, 2.0)
            beyond = t - inside
            values = values + beyond * torch.where(beyond > 0, slope, -parity * slope)
        return values


class TaylorMLP(nn.Module):
    """y = Θ · [B_n(t_j) u_j ; act(g_k) u_k]: the expanded channels' series plus plaintext channels.

    Parameter names match the release's safetensors (see docs/FORMAT.md of unswift):
    `in_proj` holds gate rows (normalised for expanded channels) then up rows; `theta` holds Θ_{j,n}
    at column j*(N+1)+n followed by the plaintext channels' down columns.
    """

    def __init__(self, config, layer_index):
        super().__init__()
        spec = config.unswift
        layer = spec["layers"][layer_index]
        self.gated = bool(spec["gated"])
        self.intermediate = int(layer["intermediate"])
        self.expanded = int(layer["expanded"])
        self.order = int(spec["order"])
        hidden = config.hidden_size
        rows = self.intermediate * (2 if self.gated else 1)
        self.in_proj = nn.Linear(hidden, rows, bias=True)
        columns = self.expanded * (self.order + 1) + (self.intermediate - self.expanded)
        self.theta = nn.Parameter(torch.empty(hidden, columns))
        self.out_bias = nn.Parameter(torch.zeros(hidden)) if spec.get("out_bias") else None
        self.basis = SeriesBasis(self.order, spec["basis"], spec["extrapolation"])
        self.act_fn = ACT2FN[spec["hidden_act"]]

    def features(self, x):
        """The vector Θ multiplies: series features of expanded channels, then plaintext activations."""
        z = self.in_proj(x)
        gate = z[..., : self.intermediate]
        t = gate[..., : self.expanded].float()
        series = self.basis(t)  # [..., S, N+1]
        if self.gated:
            up = z[..., self.intermediate :]
            series = series * up[..., : self.expanded, None].float()
            plain = self.act_fn(gate[..., self.expanded :]) * up[..., self.expanded :]
        else:
            plain = self.act_fn(gate[..., self.expanded :])
        series = series.flatten(-2).to(self.theta.dtype)
        return torch.cat([series, plain.to(self.theta.dtype)], dim=-1)

    def forward(self, x):
        return F.linear(self.features(x), self.theta, self.out_bias)


def _decoder_layers(model):
    base = getattr(model, model.base_model_prefix, model)
    return base.layers


class _TaylorMixin:
    """Swaps each decoder layer's MLP for a `TaylorMLP` after the base family builds its modules."""

    def __init__(self, config):
        check_format(getattr(config, "unswift", None))
        super().__init__(config)
        for index, layer in enumerate(_decoder_layers(self)):
            layer.mlp = TaylorMLP(config, index)
        self.post_init()

    def _init_weights(self, module):
        # Every TaylorMLP tensor comes from the release; only modules of the base family initialise.
        if isinstance(module, (TaylorMLP, SeriesBasis)):
            return
        super()._init_weights(module)


class _BaseModelMixin(_TaylorMixin):
    # A release is saved from the causal LM; its head is expected to be left out of the base model.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]


class UnswiftLlamaModel(_BaseModelMixin, LlamaModel):
    config_class = UnswiftLlamaConfig


class UnswiftLlamaForCausalLM(_TaylorMixin, LlamaForCausalLM):
    config_class = UnswiftLlamaConfig


class UnswiftMistralModel(_BaseModelMixin, MistralModel):
    config_class = UnswiftMistralConfig


class UnswiftMistralForCausalLM(_TaylorMixin, MistralForCausalLM):
    config_class = UnswiftMistralConfig


class UnswiftQwen2Model(_BaseModelMixin, Qwen2Model):
    config_class = UnswiftQwen2Config


class UnswiftQwen2ForCausalLM(_TaylorMixin, Qwen2ForCausalLM):
    config_class = UnswiftQwen2Config


class UnswiftQwen3Model(_BaseModelMixin, Qwen3Model):
    config_class = UnswiftQwen3Config


class UnswiftQwen3ForCausalLM(_TaylorMixin, Qwen3ForCausalLM):
    config_class = UnswiftQwen3Config


class UnswiftGemmaModel(_BaseModelMixin, GemmaModel):
    config_class = UnswiftGemmaConfig


class UnswiftGemmaForCausalLM(_TaylorMixin, GemmaForCausalLM):
    config_class = UnswiftGemmaConfig
