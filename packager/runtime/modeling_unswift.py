"""Models of an unswift (TaylorMLP) release: the base family with every MLP replaced by `TaylorMLP`.

Shipped verbatim inside each release. Top-level imports are the standard library, torch and
transformers only, as `trust_remote_code` users expect. The series is evaluated with one feature build
and one matrix multiply per MLP: no Python loop over terms, no host synchronisation, static shapes.
"""

import re

import torch
from torch import nn
from transformers import (
    Gemma2ForCausalLM,
    Gemma2Model,
    Gemma3ForCausalLM,
    Gemma3TextModel,
    GemmaForCausalLM,
    GemmaModel,
    GPTNeoXForCausalLM,
    GPTNeoXModel,
    LlamaForCausalLM,
    LlamaModel,
    MistralForCausalLM,
    MistralModel,
    MixtralForCausalLM,
    MixtralModel,
    Phi3ForCausalLM,
    Phi3Model,
    PhiForCausalLM,
    PhiModel,
    Qwen2ForCausalLM,
    Qwen2Model,
    Qwen2MoeForCausalLM,
    Qwen2MoeModel,
    Qwen3ForCausalLM,
    Qwen3Model,
    Qwen3MoeForCausalLM,
    Qwen3MoeModel,
)
from transformers.activations import ACT2FN
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming

from .configuration_unswift import (
    UnswiftGemma2Config,
    UnswiftGemma3TextConfig,
    UnswiftGemmaConfig,
    UnswiftGPTNeoXConfig,
    UnswiftLlamaConfig,
    UnswiftMistralConfig,
    UnswiftMixtralConfig,
    UnswiftPhi3Config,
    UnswiftPhiConfig,
    UnswiftQwen2Config,
    UnswiftQwen2MoeConfig,
    UnswiftQwen3Config,
    UnswiftQwen3MoeConfig,
)

#: The release format versions this loader understands.
SUPPORTED_FORMAT_VERSIONS = (1,)

#: Release tensor names (docs/FORMAT.md, unchanged since format 1) -> the parameters that hold them.
#: Θ lives in an `nn.Linear` so that weight-only quantisers (torchao, optimum-quanto, bitsandbytes) and
#: vLLM's linear layers treat it as the projection it is; the down bias becomes that linear's bias. The
#: lookahead keeps an already-renamed key (`theta.weight`) from being renamed twice, and is dropped when
#: transformers reverses the renaming to save, so `save_pretrained` writes the release's own names. No
#: escaped dots: transformers 5.0 copies a pattern's text verbatim into the reversed (saving) name.
TENSOR_RENAMES = ((r"theta(?![\w.])", "theta.weight"), (r"out_bias(?![\w.])", "theta.bias"))


def module_state(tensors):
    """Release tensors keyed by file name -> keyed by this runtime's parameter names (for load_state_dict)."""
    renames = [(re.compile(source), target) for source, target in TENSOR_RENAMES]
    out = {}
    for name, tensor in tensors.items():
        for pattern, target in renames:
            name = pattern.sub(target, name, count=1)
        out[name] = tensor
    return out


def _register_tensor_names(model_type):
    """Let transformers (and vLLM, which reads the same registry) load and save the release's names."""
    register_checkpoint_conversion_mapping(
        model_type, [WeightRenaming(source, target) for source, target in TENSOR_RENAMES], overwrite=True)


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
    """Evaluates B_0..B_N at every expanded channel's normalised input, times its up value u.

    Chebyshev values come from the three-term recurrence T_{n+1} = 2 s T_n - T_{n-1} with u folded into
    T_0 = u and T_1 = u s, each term a contiguous [..., S] slice (term-major), so every step is one
    vectorised pass without transcendental calls; the terms are transposed to channel-major once, in
    the copy that writes them into the features. Measured against cos(n·acos t) (hidden 576, 1,536
    channels, order 8, one CPU thread, `TaylorMLP.features` with its projection): 13.2 -> 9.7 ms per MLP
    for a 128-token prefill, 6-8 % slower for one decoded token (one small kernel per term), and as close
    to the float64 series (docs/BENCHMARKS.md, "Prefill against the FLOPs model"). With
    `extrapolation == "linear"` each basis function is continued by its tangent outside [-1, 1], so
    inputs beyond the calibrated interval cannot make the polynomial blow up: the tangent is added as
    two broadcast multiply-adds (above and below the interval). With `"none"` the recurrence runs on t
    itself, which gives T_n(t) for every real t. The small constant vectors are rebuilt in `forward`
    from `arange` (not stored as buffers: transformers creates modules on the meta device and never
    loads non-persistent buffers), which keeps the module free of host synchronisation and CUDA-graph
    capturable. No in-place operation: autograd works through it.
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
        """B_n(t) for n = 0..N: [..., S] -> [..., S, N+1], in t's dtype (float32 in `TaylorMLP`)."""
        return self.terms(t).movedim(0, -1)

    def terms(self, t, u=None):
        """u · B_n(t) for n = 0..N, term-major: [..., S] -> [N+1, ..., S] (u = 1 when None)."""
        linear = self.extrapolation == "linear"
        s = t.clamp(-1.0, 1.0) if linear else t
        one = torch.ones_like(t) if u is None else u
        if self.basis == "chebyshev":
            values = [one, one * s]
            twice = s + s
            for n in range(1, self.order):  # static: the order is fixed per group
                values.append(twice * values[n] - values[n - 1])
        else:
            values = [one]
            for n in range(self.order):
                values.append(values[n] * s)
        values = torch.stack(values[: self.order + 1])
        if not linear:
            return values
        n = torch.arange(self.order + 1, device=t.device, dtype=t.dtype).view(-1, *([1] * t.dim()))
        # Slopes at 1 and at -1: T_n'(1) = n^2, T_n'(-1) = (-1)^(n+1) n^2; (t^n)' = n t^(n-1).
        slope = n * n if self.basis == "chebyshev" else n
        below = slope * (2.0 * torch.remainder(n, 2.0) - 1.0)
        beyond = t - s
        above, under = beyond.clamp(min=0.0), beyond.clamp(max=0.0)
        if u is not None:
            above, under = above * u, under * u
        values = torch.addcmul(values, above, slope)
        return torch.addcmul(values, under, below)


class TaylorMLP(nn.Module):
    """y = Θ · [B_n(t_j) u_j ; act(g_k) u_k]: the expanded channels' series plus plaintext channels.

    Tensors as in the release's safetensors (see docs/FORMAT.md of unswift), the file's `theta` and
    `out_bias` held as `theta.weight` and `theta.bias` (`TENSOR_RENAMES`): `in_proj` holds gate rows
    (normalised for expanded channels) then up rows; Θ holds Θ_{j,n} at column j*(N+1)+n, group after
    group (each group of channels has its own order N), followed by the plaintext channels' down columns.

    One fused projection, one feature build and one matrix multiply per call, with static shapes and
    no host synchronisation (`torch.compile(fullgraph=True)` and CUDA graphs capture it). In bfloat16 /
    float16 the features are computed in float32 from the projection and cast once before the multiply;
    the multiply accumulates as the backend does for that dtype (float32 on CPU and in cuBLAS).
    """

    def __init__(self, config, layer_index):
        super().__init__()
        spec = config.unswift
        layer = spec["layers"][layer_index]
        self.gated = bool(spec["gated"])
        self.intermediate = int(layer["intermediate"])
        self.expanded = int(layer["expanded"])
        self.order = int(spec["order"])
        # Channel groups of their own order (order allocation); one group of `order` otherwise.
        groups = layer.get("groups") or [{"channels": self.expanded, "order": self.order}]
        self.groups = [(int(g["channels"]), int(g["order"])) for g in groups if int(g["channels"])]
        if sum(count for count, _ in self.groups) != self.expanded:
            raise ValueError(f"unit {layer_index}: channel groups do not add up to {self.expanded} expanded channels")
        hidden = config.hidden_size
        rows = self.intermediate * (2 if self.gated else 1)
        self.in_proj = nn.Linear(hidden, rows, bias=True)
        columns = sum(count * (order + 1) for count, order in self.groups) + (self.intermediate - self.expanded)
        self.theta = nn.Linear(columns, hidden, bias=bool(spec.get("out_bias")))  # weight = Θ [H, columns]
        self.bases = nn.ModuleList(SeriesBasis(order, spec["basis"], spec["extrapolation"]) for _, order in self.groups)
        self.uniform = _uniform(self.expanded, self.intermediate, self.groups)
        self.act_fn = ACT2FN[spec["hidden_act"]]

    def features(self, x):
        """The vector Θ multiplies: series features of expanded channels, then plaintext activations."""
        z = self.in_proj(x)
        # Θ's dtype when it is a float (Θ may be kept in bfloat16 while the rest is quantised), else the
        # activations' (a quantised Θ can report int8; torchao and quanto tensors report their float dtype).
        weight = getattr(self.theta, "weight", None)  # vLLM's quantised linears may hold no `weight`
        dtype = weight.dtype if weight is not None and weight.dtype.is_floating_point else x.dtype
        expanded, intermediate, groups = self.expanded, self.intermediate, self.groups
        if self.uniform:
            # One kind of channel: a tensor-parallel rank holds a slice of them (see `series_tp_plan`).
            intermediate = z.shape[-1] // 2 if self.gated else z.shape[-1]
            expanded = intermediate if self.expanded else 0
            groups = [(intermediate, order) for _, order in self.groups]
        columns = sum(count * (order + 1) for count, order in groups) + intermediate - expanded
        out = z.new_empty((*z.shape[:-1], columns), dtype=dtype)
        start = column = 0
        for (count, order), basis in zip(groups, self.bases, strict=True):  # static: at most a few groups
            u = z[..., intermediate + start : intermediate + start + count].float() if self.gated else None
            series = basis.terms(z[..., start : start + count].float(), u)  # [order+1, ..., count]
            # One pass: transposed to channel-major and cast into the features.
            out[..., column : column + count * (order + 1)].unflatten(-1, (count, order + 1)).copy_(
                series.movedim(0, -1))
            start += count
            column += count * (order + 1)
        if expanded < intermediate:
            plain = self.act_fn(z[..., expanded:intermediate])
            if self.gated:
                plain = plain * z[..., intermediate + expanded :]
            out[..., column:].copy_(plain)
        return out

    def forward(self, x):
        return self.theta(self.features(x))


def _uniform(expanded, intermediate, groups):
    """Whether every channel of a unit has the same number of Θ columns (one order, or none expanded)."""
    return expanded == 0 or (expanded == intermediate and len(groups) == 1)


def series_tp_plan(spec):
    """Tensor-parallel styles of the series units (transformers' names), or {} where they cannot split.

    A split must give each rank whole channels: their gate and up rows of `in_proj` (gated: the two
    halves split alike, `packed_colwise`) and exactly their Θ columns (`rowwise`, then an all-reduce).
    Contiguous splits do that only when every channel of every unit has the same number of columns:
    one order, no plaintext channels beside expanded ones. Otherwise (order allocation, partial
    coverage) the series is replicated on every rank; attention is still split. A unit whose channels
    do not divide by the number of ranks fails loudly in Θ's product (mismatched shapes), never silently.
    """
    for layer in spec["layers"]:
        groups = [g for g in (layer.get("groups") or [{"channels": layer["expanded"]}]) if g["channels"]]
        if not _uniform(int(layer["expanded"]), int(layer["intermediate"]), groups):
            return {}
    packed = _packed_colwise_style()
    if packed is None:  # transformers without DTensor tensor parallelism (before 5.2x): untested, replicate
        return {}
    units = ["layers.*.mlp"]
    experts = spec.get("experts")
    if experts:
        units.append(f"layers.*.mlp.{experts['module']}.*")
        if experts.get("shared"):
            units.append(f"layers.*.mlp.{experts['shared']}")
    plan = {}
    for unit in units:
        plan[f"{unit}.in_proj"] = packed if spec["gated"] else "colwise"
        plan[f"{unit}.theta"] = "rowwise"
    return plan


_PACKED_STYLE = []  # the registered style's name, once registered


def _packed_colwise_style():
    """transformers' packed column split with the bias split like the rows: gate half and up half alike.

    transformers' own `packed_colwise` (5.24) splits a 1-D bias contiguously, which hands rank 0 the
    gate biases of every channel. This style (registered once, when transformers' DTensor tensor
    parallelism exists) is that class with the bias split as its weight is. None where unavailable:
    the series is then replicated.
    """
    if _PACKED_STYLE:
        return _PACKED_STYLE[0]
    try:
        from torch.distributed.tensor import distribute_tensor
        from torch.distributed.tensor.placement_types import _StridedShard
        from transformers.distributed.tensor_parallel import ALL_PARALLEL_STYLES, PackedColwiseParallel
    except ImportError:
        return None

    class PackedColwiseWithBias(PackedColwiseParallel):
        def shard_param(self, module, param, mesh):
            meta = module._parameters.get(param)
            if meta is None or meta.ndim != 1:
                return super().shard_param(module, param, mesh)
            placement = _StridedShard(dim=0, split_factor=self.split_factor)
            module._parameters[param] = nn.Parameter(distribute_tensor(meta, mesh, [placement], src_data_rank=None),
                                                     requires_grad=meta.requires_grad)

    ALL_PARALLEL_STYLES.register("unswift_packed_colwise", PackedColwiseWithBias())
    _PACKED_STYLE.append("unswift_packed_colwise")
    return _PACKED_STYLE[0]


def _declare_series_plan(model, config):
    """Add the series' styles to the plans transformers built from the config (attention only)."""
    if getattr(config, "_attn_implementation", None) in ("vllm", "vllm_mla"):
        # vLLM's Transformers backend reads the same plan but has no packed column split: its `in_proj`
        # would stay whole while Θ was split. The series stays replicated there; attention is split.
        return
    plan = series_tp_plan(config.unswift)
    base = model.base_model
    if not plan or getattr(base, "_tp_plan", None) is None:
        return
    base._tp_plan.update(plan)
    if base is not model and getattr(model, "_tp_plan", None) is not None:
        model._tp_plan.update({f"{model.base_model_prefix}.{name}": style for name, style in plan.items()})


class TaylorExperts(nn.Module):
    """The routed experts of a mixture-of-experts block, each a `TaylorMLP` (children "0".."E-1").

    Called like transformers' packed experts module (hidden states [T, H], top-k expert indices and
    weights [T, k]), so the block's router is used as it is. Eagerly, each expert that receives tokens
    runs one feature build and one matrix multiply on exactly those tokens. Under `torch.compile` (vLLM
    compiles the whole decoder with `fullgraph=True`; CUDA graphs forbid host synchronisation) every
    expert runs on every token, weighted by its routing weight (zero where it was not chosen): static
    shapes and the same sums, at E/k times the MLP arithmetic.

    Deliberately not an `nn.ModuleList`: vLLM's Transformers backend replaces a block's `experts`
    ModuleList (or 3-D packed experts) by its fused MoE kernel, which knows nothing of the series and
    would compute with weights the release does not have.
    """

    def __init__(self, experts):
        super().__init__()
        for index, expert in enumerate(experts):
            self.add_module(str(index), expert)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, index):
        return self._modules[str(index)]

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, hidden_states, top_k_index, top_k_weights):
        if torch.compiler.is_compiling():
            return self._dense(hidden_states, top_k_index, top_k_weights)
        out = torch.zeros_like(hidden_states)
        for expert in torch.unique(top_k_index).tolist():
            if expert >= len(self):  # transformers' marker for "no expert" (expert-parallel sharding)
                continue
            token, slot = torch.where(top_k_index == expert)
            y = self[expert](hidden_states[token]) * top_k_weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out

    def _dense(self, hidden_states, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden_states)
        for index, expert in enumerate(self):
            weight = torch.where(top_k_index == index, top_k_weights, 0.0).sum(-1, keepdim=True)
            out = out + (expert(hidden_states) * weight).to(out.dtype)
        return out


def install_taylor_mlps(layers, config):
    """Replace every MLP unit of `layers` (decoder layers, in order) by its series module.

    Units follow config.unswift["layers"]: per layer its dense MLP, or, in a mixture-of-experts block,
    the routed experts then the shared expert. Routers and shared-expert gates stay as they are.
    Returns (module, attribute, original) for each replacement, so a caller can put the originals back.
    """
    spec = config.unswift
    experts = spec.get("experts")
    replaced = []
    index = 0
    for layer in layers:
        block = layer.mlp
        if experts and hasattr(block, experts["module"]):
            count = getattr(block, experts["module"]).num_experts
            taylor = TaylorExperts(TaylorMLP(config, index + e) for e in range(count))
            replaced.append((block, experts["module"], getattr(block, experts["module"])))
            index += count
            if experts.get("shared"):
                replaced.append((block, experts["shared"], getattr(block, experts["shared"])))
                setattr(block, experts["shared"], TaylorMLP(config, index))
                index += 1
            setattr(block, experts["module"], taylor)
        else:
            replaced.append((layer, "mlp", block))
            layer.mlp = TaylorMLP(config, index)
            index += 1
    if index != len(spec["layers"]):
        raise ValueError(f"this model has {index} MLP units but the release describes {len(spec['layers'])}; "
                         "config.json does not match the model it was written for")
    return replaced


def _decoder_layers(model):
    base = getattr(model, model.base_model_prefix, model)
    return base.layers


class _TaylorMixin:
    """Swaps each decoder layer's MLP units for `TaylorMLP`s after the base family builds its modules."""

    def __init__(self, config):
        check_format(getattr(config, "unswift", None))
        super().__init__(config)
        install_taylor_mlps(_decoder_layers(self), config)
        self.post_init()
        _declare_series_plan(self, config)

    def _init_weights(self, module):
        # Every TaylorMLP tensor comes from the release; only modules of the base family initialise.
        if isinstance(module, (TaylorMLP, SeriesBasis, TaylorExperts)):
            return
        super()._init_weights(module)


_HEAD = re.compile(r"^lm_head\.")


class _BaseModelMixin(_TaylorMixin):
    """A release is saved from the causal LM: its head is left out of the base model without a report.

    Not `_keys_to_ignore_on_load_unexpected`: vLLM's Transformers backend builds the causal LM around
    the base model and turns that list into "discard these weights", which left an untied `lm_head`
    uninitialised (every generated token 0). transformers' own filter is extended instead; its argument
    changed between 5.x releases (two key sets, then one loading-info object), so both are handled.
    """

    def _adjust_missing_and_unexpected_keys(self, *args, **kwargs):
        result = super()._adjust_missing_and_unexpected_keys(*args, **kwargs)
        if isinstance(result, tuple):
            missing, unexpected = result
            return missing, {key for key in unexpected if not _HEAD.match(key)}
        info = args[0] if args else next(iter(kwargs.values()))
        info.unexpected_keys = {key for key in info.unexpected_keys if not _HEAD.match(key)}
        return result


class UnswiftLlamaModel(_BaseModelMixin, LlamaModel):
    config_class = UnswiftLlamaConfig


class UnswiftLlamaForCausalLM(_TaylorMixin, LlamaForCausalLM):
    config_class = UnswiftLlamaConfig


class UnswiftMistralModel(_BaseModelMixin, MistralModel):
    config_class = UnswiftMistralConfig


class UnswiftMistralForCausalLM(_TaylorMixin, MistralForCausalLM):
    config_class = UnswiftMistralConfig


class UnswiftPhiModel(_BaseModelMixin, PhiModel):
    config_class = UnswiftPhiConfig


class UnswiftPhiForCausalLM(_TaylorMixin, PhiForCausalLM):
    config_class = UnswiftPhiConfig


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


class UnswiftGemma2Model(_BaseModelMixin, Gemma2Model):
    config_class = UnswiftGemma2Config


class UnswiftGemma2ForCausalLM(_TaylorMixin, Gemma2ForCausalLM):
    config_class = UnswiftGemma2Config


class UnswiftGemma3TextModel(_BaseModelMixin, Gemma3TextModel):
    config_class = UnswiftGemma3TextConfig


class UnswiftGemma3TextForCausalLM(_TaylorMixin, Gemma3ForCausalLM):
    config_class = UnswiftGemma3TextConfig


class UnswiftPhi3Model(_BaseModelMixin, Phi3Model):
    config_class = UnswiftPhi3Config


class UnswiftPhi3ForCausalLM(_TaylorMixin, Phi3ForCausalLM):
    config_class = UnswiftPhi3Config


class UnswiftGPTNeoXModel(_BaseModelMixin, GPTNeoXModel):
    config_class = UnswiftGPTNeoXConfig


class UnswiftGPTNeoXForCausalLM(_TaylorMixin, GPTNeoXForCausalLM):
    config_class = UnswiftGPTNeoXConfig


class UnswiftMixtralModel(_BaseModelMixin, MixtralModel):
    config_class = UnswiftMixtralConfig


class UnswiftMixtralForCausalLM(_TaylorMixin, MixtralForCausalLM):
    config_class = UnswiftMixtralConfig


class UnswiftQwen2MoeModel(_BaseModelMixin, Qwen2MoeModel):
    config_class = UnswiftQwen2MoeConfig


class UnswiftQwen2MoeForCausalLM(_TaylorMixin, Qwen2MoeForCausalLM):
    config_class = UnswiftQwen2MoeConfig


class UnswiftQwen3MoeModel(_BaseModelMixin, Qwen3MoeModel):
    config_class = UnswiftQwen3MoeConfig


class UnswiftQwen3MoeForCausalLM(_TaylorMixin, Qwen3MoeForCausalLM):
    config_class = UnswiftQwen3MoeConfig


for _config_class in (UnswiftLlamaConfig, UnswiftMistralConfig, UnswiftPhiConfig, UnswiftQwen2Config,
                      UnswiftQwen3Config, UnswiftGemmaConfig, UnswiftGemma2Config, UnswiftGemma3TextConfig,
                      UnswiftPhi3Config, UnswiftGPTNeoXConfig, UnswiftMixtralConfig, UnswiftQwen2MoeConfig,
                      UnswiftQwen3MoeConfig):
    _register_tensor_names(_config_class.model_type)
