"""Measuring a `--slowdown` candidate on the source model in memory: its decode time and its fidelity.

Timing swaps in runtime `TaylorMLP`s of the candidate's shapes (their values do not change the time) and
decodes interleaved with the source; fidelity swaps in MLPs that compute the candidate's series from
its fits, without the (N+1)-fold matrix. Both put the source's modules back afterwards.

When the whole candidate's modules would not fit beside the model (a large model, or a large slowdown:
15 GB for `--slowdown 8` on a 135M model), the candidate is timed a few decoder layers at a time
(`measure_slowdown_by_chunks`): only one chunk's modules exist at once, each chunk is timed against the
source in whole-model decode steps, and the release's step is the source's plus every chunk's extra
time. A measurement still, not the bytes model's estimate.
"""

from __future__ import annotations

import dataclasses
import types

import torch
from torch import nn

from packager.devices import available_memory
from packager.formats.checkpoint import Checkpoint
from packager.maths.series.fit import ChannelFit
from packager.maths.sizing import ReleaseSizer
from packager.maths.transform import LayerPlan
from packager.stages.bench import Contender, measure_decode
from packager.stages.evaluate import Agreement
from packager.stages.swap import MlpSet

#: Timed decode steps per model for each measurement (after warm-up), batch 1.
TIMING_STEPS = 12
TIMING_WARMUP = 2
#: Rows of tokens per series evaluation chunk in the fidelity path (bounds its memory).
_CHUNK_ROWS = 512


def pad(fit: ChannelFit, order: int) -> ChannelFit:
    """The fit with zero coefficients appended up to `order`."""
    extra = order + 1 - fit.coefficients.shape[-1]
    return dataclasses.replace(fit, coefficients=torch.nn.functional.pad(fit.coefficients, (0, extra)))


def release_fits(plans: list[LayerPlan], masks: list[torch.Tensor], order: int) -> list[ChannelFit]:
    """Per unit, the fit each channel is released with: uniform order, or base / boost orders."""
    from packager.maths.transform import boost_channels

    boosts = boost_channels(plans, masks, order)
    if boosts is None:
        return [plan.fit for plan in plans]
    fits = []
    for plan, boosted in zip(plans, boosts, strict=True):
        base, boost = pad(plan.base, plan.boost.coefficients.shape[-1] - 1), plan.boost
        column = boosted.unsqueeze(-1)
        fits.append(dataclasses.replace(boost, centre=torch.where(boosted, boost.centre, base.centre),
                                        half_width=torch.where(boosted, boost.half_width, base.half_width),
                                        coefficients=torch.where(column, boost.coefficients, base.coefficients),
                                        error=torch.where(boosted, boost.error, base.error)))
    return fits


# -- timing ---------------------------------------------------------------------------------------


def _timing_modules(model, checkpoint: Checkpoint, sizer: ReleaseSizer, order: int, expanded: list[int] | None,
                    layers: list[dict] | None = None, only: range | None = None) -> list[nn.Module]:
    """Runtime TaylorMLPs with the release's shapes and harmless constant values (time is all that counts).

    Shapes: `expanded` channels per unit at one `order`, or `layers` (config "layers" entries with groups).
    `only`: build the units in this range alone (the others are None).
    """
    from packager.runtime.modeling_unswift import TaylorMLP

    parameter = next(model.parameters())
    if layers is None:
        layers = [{"intermediate": u.intermediate, "expanded": e} for u, e in zip(sizer.units, expanded, strict=True)]
    spec = {"gated": sizer.gated, "order": order, "basis": "chebyshev", "extrapolation": "linear",
            "hidden_act": checkpoint.adapter.activation_name(checkpoint.config),
            "out_bias": any(u.down_bias for u in sizer.units), "layers": layers}
    modules: list[nn.Module | None] = []
    for index, unit in enumerate(sizer.units):
        if only is not None and index not in only:
            modules.append(None)
            continue
        mlp = TaylorMLP(types.SimpleNamespace(unswift=spec, hidden_size=unit.hidden), index)
        with torch.no_grad():
            for name, tensor in mlp.named_parameters():
                tensor.fill_(0.0 if name.endswith("bias") else 1e-3)  # written: real pages, no denormals
        modules.append(mlp.to(device=parameter.device, dtype=parameter.dtype))
    return modules


def measure_slowdown(model, checkpoint: Checkpoint, sizer: ReleaseSizer, order: int, expanded: list[int] | None, *,
                     context: int, steps: int = TIMING_STEPS, warmup: int = TIMING_WARMUP,
                     layers: list[dict] | None = None) -> float:
    """Measured decode slowdown (batch 1) of a release of these shapes, against the model as it is."""
    original = MlpSet(model, checkpoint.adapter)
    release = MlpSet(model, checkpoint.adapter, _timing_modules(model, checkpoint, sizer, order, expanded, layers))
    device = str(next(model.parameters()).device)
    try:
        ref, rel = measure_decode([Contender(model, original.install), Contender(model, release.install)],
                                  vocab=int(model.config.vocab_size), device=device, batch=1, context=context,
                                  steps=steps, warmup=warmup)
    finally:
        original.install()
    return rel / ref


def measure_slowdown_by_chunks(model, checkpoint: Checkpoint, sizer: ReleaseSizer, order: int,
                               expanded: list[int] | None, *, context: int, room: int, steps: int = TIMING_STEPS,
                               warmup: int = TIMING_WARMUP, layers: list[dict] | None = None) -> tuple[float, int]:
    """Measured decode slowdown of a candidate too large to hold at once, timed chunk by chunk.

    Consecutive decoder layers are grouped so that one chunk's timing modules take at most `room` bytes;
    each chunk replaces only its layers and is timed against the source, interleaved, in whole-model
    decode steps. The release's step time is taken as the source's plus the sum of the chunks' extra
    times (MLPs run one after another, so their extra times add).

    Returns:
        (slowdown, number of chunks timed).

    Raises:
        NoRoom: a single layer's modules are larger than `room`.
    """
    per_unit = unit_timing_bytes(model, sizer, order, expanded, layers)
    chunks: list[range] = []
    start, used = 0, 0
    for index, size in enumerate(per_unit):
        if size > room:
            raise NoRoom(f"layer {index}'s timing modules need {size / 1e9:.2f} GB, more than {room / 1e9:.2f} GB")
        if used + size > room:
            chunks.append(range(start, index))
            start, used = index, 0
        used += size
    chunks.append(range(start, len(per_unit)))
    original = MlpSet(model, checkpoint.adapter)
    device = str(next(model.parameters()).device)
    source_times, extra = [], 0.0
    try:
        for chunk in chunks:
            built = _timing_modules(model, checkpoint, sizer, order, expanded, layers, only=chunk)
            modules = [mine if mine is not None else theirs for mine, theirs in zip(built, original.modules,
                                                                                  strict=True)]
            candidate = MlpSet(model, checkpoint.adapter, modules)
            ref, rel = measure_decode([Contender(model, original.install), Contender(model, candidate.install)],
                                      vocab=int(model.config.vocab_size), device=device, batch=1, context=context,
                                      steps=steps, warmup=warmup)
            original.install()
            source_times.append(ref)
            extra += rel - ref
            del built, modules, candidate
    finally:
        original.install()
    source = sorted(source_times)[len(source_times) // 2]
    return (source + extra) / source, len(chunks)


def unit_timing_bytes(model, sizer: ReleaseSizer, order: int, expanded: list[int] | None,
                      layers: list[dict] | None = None) -> list[int]:
    """Bytes of each unit's timing modules at the model's dtype, in decoder-layer order."""
    size = next(model.parameters()).element_size()
    tensors = sizer.layer_tensors(layers) if layers is not None else sizer.tensors(order, expanded)
    return [sum(spec.numel * size for name, spec in tensors.items()
                if name.startswith(unit.prefix) and name.endswith(_TIMED)) for unit in sizer.units]


#: The tensors a timing module allocates.
_TIMED = ("in_proj.weight", "in_proj.bias", "theta", "out_bias")

#: Timing modules may take this share of the memory available (the rest: activations, the allocator).
ROOM_SHARE = 0.8


class NoRoom(Exception):
    """A candidate's timing modules would not fit beside the model."""


def timing_memory(model, sizer: ReleaseSizer, order: int, expanded: list[int] | None,
                  layers: list[dict] | None = None) -> tuple[int, int]:
    """(bytes the timing modules of this release need at the model's dtype, bytes available on its device)."""
    needed = sum(unit_timing_bytes(model, sizer, order, expanded, layers))
    return needed, available_memory(next(model.parameters()).device)


# -- fidelity -------------------------------------------------------------------------------------


class _SeriesMLP(nn.Module):
    """One dense source MLP computing the release's function: the series on expanded channels.

    Evaluated from the fit (centre, half-width, coefficients) instead of Θ: the release's hardening
    (signs, scales, permutation) changes no value, so this is the release's output up to rounding.
    """

    def __init__(self, original: nn.Module, checkpoint: Checkpoint, fit: ChannelFit, mask: torch.Tensor) -> None:
        from transformers.activations import ACT2FN

        from packager.runtime.modeling_unswift import SeriesBasis

        super().__init__()
        self.original = original
        self.adapter = checkpoint.adapter
        self.act = ACT2FN[checkpoint.adapter.activation_name(checkpoint.config)]
        index = torch.nonzero(mask).flatten()
        coefficients = fit.coefficients[index]
        used = coefficients.abs().amax(0) > 0 if index.numel() else torch.zeros(1, dtype=torch.bool)
        nonzero = torch.nonzero(used).flatten()
        degree = int(nonzero.max()) if nonzero.numel() else 0  # trailing zero terms add nothing
        parameter = next(original.parameters())
        self.register_buffer("index", index.to(parameter.device), persistent=False)
        self.register_buffer("centre", fit.centre[index].to(parameter.device, torch.float32), persistent=False)
        self.register_buffer("half_width", fit.half_width[index].to(parameter.device, torch.float32), persistent=False)
        self.register_buffer("coefficients", coefficients[:, : degree + 1].to(parameter.device, torch.float32),
                             persistent=False)
        self.basis = SeriesBasis(degree, fit.basis, fit.extrapolation)

    def forward(self, x):
        g, u = self.adapter.preactivations(self.original, x)
        a = self.act(g)
        if self.index.numel():
            t = (g.index_select(-1, self.index).float() - self.centre) / self.half_width
            t = t.reshape(-1, self.index.numel())
            series = torch.cat([(self.basis(rows) * self.coefficients).sum(-1) for rows in t.split(_CHUNK_ROWS)])
            a = a.index_copy(-1, self.index, series.view(*g.shape[:-1], -1).to(a.dtype))
        h = a * u if u is not None else a
        return getattr(self.original, self.adapter.down)(h)


@torch.no_grad()
def measure_fidelity(model, checkpoint: Checkpoint, plans: list[LayerPlan], masks: list[torch.Tensor], order: int,
                     ids: torch.Tensor, reference: list[torch.Tensor], *, batch_size: int = 4) -> dict:
    """Teacher-forced top-1 agreement and KL of the release function against `reference` logits."""
    originals = MlpSet(model, checkpoint.adapter)
    fits = release_fits(plans, masks, order)
    series = MlpSet(model, checkpoint.adapter, [_SeriesMLP(module, checkpoint, fit, mask) for module, fit, mask
                                                in zip(originals.modules, fits, masks, strict=True)])
    device = next(model.parameters()).device
    agreement = Agreement()
    series.install()
    try:
        for batch, ref in zip(ids.split(batch_size), reference, strict=True):
            logits = model(input_ids=batch.to(device)).logits[:, :-1].float().cpu()
            agreement.add(ref, logits, batch[:, 1:])
    finally:
        originals.install()
    return {"top1_agreement": agreement.top1_agreement, "kl_mean": agreement.kl_mean, "tokens": agreement.tokens}


