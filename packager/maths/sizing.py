"""The bytes model: what one decoded token reads, what a release weighs, what a user needs to run it.

Decoding one token at a small batch is bound by memory traffic: every weight is read once per step,
so the bytes a step reads predict its time. docs/INTERFACE.md ("The bytes model") defines them as every tensor
at the runtime dtype, except the input-embedding table of which one row per sequence is read, plus the
KV cache read at the bench's context length. A tied LM head reads the whole table. A routed expert is
read only when a token is routed to it: its tensors count with the expected share of experts a step
touches, 1 - (1 - k/E)^batch.

    predicted_decode_slowdown = release bytes per step / source bytes per step

Sizes come from safetensors headers only (no tensor is read), so a plan for a checkpoint larger than
memory costs milliseconds. A release replaces each MLP unit's gate/up/down by `in_proj` (gate then up
rows), `theta` ([H, S(N+1) + P]) and an optional `out_bias` (docs/FORMAT.md); everything else is copied.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from packager.dtypes import CODE_SIZES, FLOATING_CODES, RUNTIME_CODES, RUNTIME_SIZES

#: The input-embedding table, in the layouts of the supported families.
INPUT_EMBEDDING = re.compile(r"(^|\.)(embed_tokens|embed_in|wte|word_embeddings)\.weight$")
#: The output projection when it is a tensor of its own (GPT-NeoX calls it embed_out).
LM_HEAD = re.compile(r"(^|\.)(lm_head|embed_out)\.weight$")
ROUTED_EXPERT = re.compile(r"\.experts\.")
#: Default context of a plan's memory figure (tokens of one sequence held in the KV cache).
PLAN_CONTEXT = 4096


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as its safetensors header describes it."""

    shape: tuple[int, ...]
    dtype: str  # safetensors code: F32, BF16, ...

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count

    @property
    def floating(self) -> bool:
        return self.dtype in FLOATING_CODES

    def nbytes(self, dtype: str | None = None) -> int:
        """Bytes at the runtime `dtype` (floating tensors only; others keep theirs), or as stored."""
        if dtype is not None and self.floating:
            return self.numel * RUNTIME_SIZES[dtype]
        return self.numel * CODE_SIZES[self.dtype]


def _get(config, key: str, default=None):
    if isinstance(config, Mapping):
        value = config.get(key, default)
    else:
        value = getattr(config, key, default)
    return default if value is None else value


@dataclass(frozen=True)
class StepBytes:
    """Bytes one decode step reads: weights and KV cache (batch sequences at `context` tokens)."""

    weights: int
    kv_cache: int
    dtype: str
    context: int
    batch: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache

    def to_json(self) -> dict:
        return {"weights_bytes": self.weights, "kv_cache_bytes": self.kv_cache, "total_bytes": self.total,
                "dtype": self.dtype, "context": self.context, "batch": self.batch}


def routed_share(config, batch: int) -> float:
    """Expected share of a mixture-of-experts block's routed experts one step reads (1.0 if dense)."""
    experts = _get(config, "num_local_experts") or _get(config, "num_experts")
    top_k = _get(config, "num_experts_per_tok") or _get(config, "top_k")
    if not experts or not top_k:
        return 1.0
    return 1.0 - (1.0 - min(top_k / experts, 1.0)) ** batch


def kv_cache_bytes(config, *, dtype: str, context: int, batch: int = 1) -> int:
    """Keys and values of every attention layer for `batch` sequences of `context` tokens.

    Sliding-window layers (`layer_types`) hold at most their window.
    """
    layers = int(_get(config, "num_hidden_layers"))
    heads = int(_get(config, "num_attention_heads"))
    kv_heads = int(_get(config, "num_key_value_heads", heads))
    head_dim = int(_get(config, "head_dim", 0) or _get(config, "hidden_size") // heads)
    window = _get(config, "sliding_window")
    layer_types = list(_get(config, "layer_types", []) or [])
    total = 0
    for layer in range(layers):
        kind = layer_types[layer] if layer < len(layer_types) else "full_attention"
        held = min(context, int(window)) if kind == "sliding_attention" and window else context
        total += 2 * kv_heads * head_dim * held
    return total * batch * RUNTIME_SIZES[dtype]


def step_bytes(tensors: Mapping[str, TensorSpec], config, *, dtype: str, context: int, batch: int = 1
               ) -> StepBytes:
    """Bytes one decode step of `batch` sequences at `context` tokens reads (docs/INTERFACE.md#bytes-model)."""
    tied = bool(_get(config, "tie_word_embeddings", False))
    share = routed_share(config, batch)
    weights = 0.0
    for name, spec in tensors.items():
        size = spec.nbytes(dtype)
        if INPUT_EMBEDDING.search(name):
            rows = max(spec.shape[0], 1)
            weights += size / rows * batch  # one row per sequence
            if tied:
                weights += size  # the tied LM head reads the whole table
        elif LM_HEAD.search(name) and tied and any(INPUT_EMBEDDING.search(n) for n in tensors):
            continue  # a saved copy of the tied table: transformers keeps one tensor
        elif ROUTED_EXPERT.search(name):
            weights += size * share
        else:
            weights += size
    return StepBytes(int(round(weights)), kv_cache_bytes(config, dtype=dtype, context=context, batch=batch),
                     dtype, context, batch)


def predicted_decode_slowdown(release: Mapping[str, TensorSpec], source: Mapping[str, TensorSpec], config, *,
                              dtype: str, context: int, batch: int = 1) -> float:
    """Release bytes per decode step / source bytes per decode step (same dtype, context, batch)."""
    ours = step_bytes(release, config, dtype=dtype, context=context, batch=batch)
    theirs = step_bytes(source, config, dtype=dtype, context=context, batch=batch)
    return ours.total / theirs.total


def weight_bytes(tensors: Mapping[str, TensorSpec], dtype: str | None = None) -> int:
    """Bytes of every tensor (as stored, or at `dtype`): a release's size on disk, less small headers."""
    return sum(spec.nbytes(dtype) for spec in tensors.values())


def memory_needed(tensors: Mapping[str, TensorSpec], config, *, context: int = PLAN_CONTEXT) -> dict:
    """Memory a user needs to run the model at each dtype: weights plus one sequence's KV cache.

    Activations and the framework's own footprint come on top (small next to these at batch 1).
    """
    out = {}
    for dtype in RUNTIME_SIZES:
        weights = weight_bytes(tensors, dtype)
        kv = kv_cache_bytes(config, dtype=dtype, context=context)
        out[dtype] = {"weights_bytes": weights, "kv_cache_bytes": kv, "total_bytes": weights + kv,
                      "context": context}
    return out


# -- releases that do not exist yet (plans) ---------------------------------------------------------


@dataclass(frozen=True)
class UnitShape:
    """One MLP unit of the source: its release name prefix, hidden and intermediate widths."""

    prefix: str
    hidden: int
    intermediate: int
    down_bias: bool


def unit_shapes(checkpoint, tensors: Mapping[str, TensorSpec]) -> list[UnitShape]:
    """Widths of every MLP unit (`Adapter.units`) from the checkpoint's headers; no tensor is read."""
    adapter = checkpoint.adapter
    shapes = []
    for unit in adapter.units(checkpoint.config):
        hidden, intermediate, bias = _unit_width(checkpoint, unit, tensors)
        shapes.append(UnitShape(unit.prefix, hidden, intermediate, bias))
    return shapes


def _unit_width(checkpoint, unit, tensors: Mapping[str, TensorSpec]) -> tuple[int, int, bool]:
    adapter = checkpoint.adapter
    if unit.expert is None:
        key = f"{unit.prefix}{adapter.down}.weight"
        if key in tensors:
            hidden, intermediate = tensors[key].shape
            return hidden, intermediate, f"{unit.prefix}{adapter.down}.bias" in tensors
    else:
        packed = f"{unit.name.rsplit('.', 1)[0]}.down_proj"
        if packed in tensors:
            _, hidden, intermediate = tensors[packed].shape
            return hidden, intermediate, False
        experts = adapter.experts
        blocks = [adapter.mlp] + ([experts.legacy_block] if experts.legacy_block else [])
        for block in blocks:
            key = (f"{adapter.layers_prefix}.{unit.layer}.{block}.{experts.module}.{unit.expert}."
                   f"{experts.legacy[2]}.weight")
            if key in tensors:
                hidden, intermediate = tensors[key].shape
                return hidden, intermediate, False
    down = adapter.read_mlp(checkpoint, unit, parts=("down", "down_bias"))  # an unusual layout: read it
    return int(down["down"].shape[0]), int(down["down"].shape[1]), "down_bias" in down


class ReleaseSizer:
    """Sizes of a release of one checkpoint for any (order, expanded channels per unit), from headers.

    The copied tensors are fixed; each MLP unit contributes `in_proj` [(2)I, H] + bias, `theta`
    [H, S(N+1) + I - S] and `out_bias` [H] when the source has a down bias.
    """

    def __init__(self, checkpoint, *, dtype: str) -> None:
        self.config = checkpoint.config
        self.dtype = dtype
        self.gated = checkpoint.adapter.gated
        self.source = dict(checkpoint.tensor_specs())
        self.units = unit_shapes(checkpoint, self.source)
        prefixes = checkpoint.adapter.source_prefixes(checkpoint.config)
        code = RUNTIME_CODES[dtype]
        self._code = code
        self.copied = {checkpoint.adapter.release_key(name): (TensorSpec(spec.shape, code) if spec.floating else spec)
                       for name, spec in self.source.items() if not name.startswith(prefixes)}

    @property
    def channels(self) -> int:
        """MLP intermediate channels over all units (coverage 1.0 expands all of them)."""
        return sum(unit.intermediate for unit in self.units)

    def uniform(self, coverage: float) -> list[int]:
        """Expanded channels per unit when each unit expands the same share (a plan without statistics)."""
        return [int(round(coverage * unit.intermediate)) for unit in self.units]

    def tensors(self, order: int, expanded: list[int]) -> dict[str, TensorSpec]:
        """Every tensor of the release with `expanded[u]` channels of unit u at series order `order`."""
        out = dict(self.copied)
        for unit, count in zip(self.units, expanded, strict=True):
            rows = unit.intermediate * (2 if self.gated else 1)
            out[unit.prefix + "in_proj.weight"] = TensorSpec((rows, unit.hidden), self._code)
            out[unit.prefix + "in_proj.bias"] = TensorSpec((rows,), self._code)
            columns = count * (order + 1) + unit.intermediate - count
            out[unit.prefix + "theta"] = TensorSpec((unit.hidden, columns), self._code)
            if unit.down_bias:
                out[unit.prefix + "out_bias"] = TensorSpec((unit.hidden,), self._code)
        return out

    def layer_tensors(self, layers: list[dict]) -> dict[str, TensorSpec]:
        """Every tensor of a release whose units are `layers` (config.json["unswift"]["layers"] entries:
        intermediate, expanded, groups of (channels, order)); a unit may keep fewer channels than the source."""
        out = dict(self.copied)
        for unit, layer in zip(self.units, layers, strict=True):
            intermediate = int(layer["intermediate"])
            rows = intermediate * (2 if self.gated else 1)
            out[unit.prefix + "in_proj.weight"] = TensorSpec((rows, unit.hidden), self._code)
            out[unit.prefix + "in_proj.bias"] = TensorSpec((rows,), self._code)
            columns = sum(int(g["channels"]) * (int(g["order"]) + 1) for g in layer.get("groups") or [])
            columns += intermediate - int(layer["expanded"])
            out[unit.prefix + "theta"] = TensorSpec((unit.hidden, columns), self._code)
            if unit.down_bias:
                out[unit.prefix + "out_bias"] = TensorSpec((unit.hidden,), self._code)
        return out

    def predicted_layers(self, layers: list[dict], *, context: int, batch: int = 1) -> float:
        """The bytes model's decode slowdown of a release of these unit shapes (see `layer_tensors`)."""
        return predicted_decode_slowdown(self.layer_tensors(layers), self.source, self.config, dtype=self.dtype,
                                         context=context, batch=batch)

    def predicted(self, order: int, expanded: list[int], *, context: int, batch: int = 1,
                  dtype: str | None = None) -> float:
        return predicted_decode_slowdown(self.tensors(order, expanded), self.source, self.config,
                                         dtype=dtype or self.dtype, context=context, batch=batch)

    def coverage_for(self, target: float, order: int, *, context: int, batch: int = 1,
                     expanded_for: Callable[[float], list[int]] | None = None) -> float | None:
        """The coverage in (0, 1] at which `order` predicts `target`, or None if it cannot reach it.

        The prediction grows with the expanded channels, so a bisection on coverage finds it;
        `expanded_for(coverage)` gives the channels per unit (default: the same share in every unit).
        """
        expanded_for = expanded_for or self.uniform
        predict = lambda c: self.predicted(order, expanded_for(c), context=context, batch=batch)  # noqa: E731
        if predict(1.0) < target or predict(0.0) > target:
            return None
        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            if predict(mid) < target:
                lo = mid
            else:
                hi = mid
        return hi

    def reach(self, max_order: int, *, context: int, batch: int = 1) -> float:
        """The largest predicted slowdown any allowed (order, coverage) gives: full coverage at max_order."""
        return self.predicted(max_order, self.uniform(1.0), context=context, batch=batch)


def plan_json(sizer: ReleaseSizer, order: int, expanded: list[int], *, context: int,
              memory_context: int = PLAN_CONTEXT) -> dict:
    """The figures of one (order, expanded) plan: size on disk, memory per dtype, predicted slowdown."""
    tensors = sizer.tensors(order, expanded)
    return {
        "order": order,
        "coverage": sum(expanded) / max(sizer.channels, 1),
        "release_bytes": weight_bytes(tensors),
        "source_bytes": weight_bytes(sizer.source),
        "memory": memory_needed(tensors, sizer.config, context=memory_context),
        "predicted_decode_slowdown": predicted_decode_slowdown(tensors, sizer.source, sizer.config,
                                                               dtype=sizer.dtype, context=context),
        "context": context,
    }


def dominant_dtype(tensors: Mapping[str, TensorSpec]) -> str:
    """The runtime dtype name of most floating bytes (a checkpoint's own dtype), float32 if unknown."""
    names = {code: name for name, code in RUNTIME_CODES.items()}
    totals: dict[str, int] = {}
    for spec in tensors.values():
        if spec.dtype in names:
            totals[names[spec.dtype]] = totals.get(names[spec.dtype], 0) + spec.nbytes()
    return max(totals, key=totals.get) if totals else "float32"
