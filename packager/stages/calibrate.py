"""Calibration: per-channel statistics of every MLP's gate pre-activation, from text.

Two passes over the calibration text with forward hooks: the first gathers min, max, mean and variance
(float64, merged per batch with Chan's parallel formula), the RMS of the up projection and each dense
unit's output energy ||y||^2 (mean and median over tokens: the padding criterion's scale); the second
fills a fixed-width histogram per channel over [min, max]. When the first pass's pre-activations fit in
memory (`KEEP_ACTIVATIONS_BYTES`), the histograms are filled from them instead: the same values, one
forward pass fewer. The last tenth of the sequences is held out
and only counted: how often held-out activations fall outside the calibrated range.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from packager.devices import check_device
from packager.errors import UsageError
from packager.formats.checkpoint import Checkpoint
from packager.formats.stats import Stats
from packager.limits import check
from packager.maths.statistics import LayerStats
from packager.progress import Progress, reporter
from packager.stages.text import TokenText, load_text, sample_text
from packager.threads import map_blocks

DEFAULT_TOKENS = 16384
DEFAULT_SEQ_LEN = 512
DEFAULT_BINS = 256


@contextlib.contextmanager
def _mlp_hooks(checkpoint: Checkpoint, model, sink: Callable[[int, torch.Tensor, torch.Tensor | None], None],
               out_sink: Callable[[int, torch.Tensor], None] | None = None) -> Iterator[None]:
    """Call sink(unit, g, u) with the pre-activations every MLP unit sees, and out_sink(unit, y) with every
    dense unit's output; the hooks are always removed.

    A routed expert's unit only sees the tokens routed to it (see `Adapter.taps`); its output is not
    tapped (the packed experts module returns the routed sum).
    """
    handles = []
    for module, tap in checkpoint.adapter.taps(model):
        def hook(module, args, kwargs, tap=tap):
            for index, g, u in tap(module, args, kwargs):
                sink(index, g.reshape(-1, g.shape[-1]), None if u is None else u.reshape(-1, u.shape[-1]))
        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    if out_sink is not None:
        for module, index in checkpoint.adapter.outputs(model):
            def out_hook(_module, _args, result, index=index):
                y = result[0] if isinstance(result, tuple) else result
                out_sink(index, y.reshape(-1, y.shape[-1]))
            handles.append(module.register_forward_hook(out_hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _Moments:
    """Running min / max / mean / M2 per channel in float64 (Chan et al. merge of batch moments)."""

    def __init__(self) -> None:
        self.count = 0
        self.min = self.max = self.mean = self.m2 = self.up_sq = None

    def add(self, g: torch.Tensor, u: torch.Tensor | None) -> None:
        g = g.double()
        n = g.shape[0]
        bmin, bmax, bmean = g.min(0).values, g.max(0).values, g.mean(0)
        bm2 = ((g - bmean) ** 2).sum(0)
        bup = (u.double() ** 2).sum(0) if u is not None else torch.zeros_like(bmean)
        if self.count == 0:
            self.min, self.max, self.mean, self.m2, self.up_sq = bmin, bmax, bmean, bm2, bup
        else:
            total = self.count + n
            delta = bmean - self.mean
            self.mean = self.mean + delta * n / total
            self.m2 = self.m2 + bm2 + delta**2 * self.count * n / total
            self.min, self.max = torch.minimum(self.min, bmin), torch.maximum(self.max, bmax)
            self.up_sq = self.up_sq + bup
        self.count += n


def _batches(ids: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for start in range(0, ids.shape[0], size):
        yield ids[start : start + size]


def check_calibration_options(*, tokens: int | None = None, seed: int | None = None,
                              device: str | None = None) -> None:
    """Raise UsageError for a token count, seed or device out of range (None: not given, not checked)."""
    check("--calibration-tokens", tokens)
    check("--calibration-seed", seed)
    check_device(device, allow_auto=True)


@torch.no_grad()
def calibrate(
    checkpoint: Checkpoint, *, text: str | Path | None = None, tokens: int = DEFAULT_TOKENS,
    seed: int = 0, seq_len: int = DEFAULT_SEQ_LEN, bins: int = DEFAULT_BINS, device: str = "cpu",
    batch_size: int = 8, progress: Progress = None, model=None,
) -> Stats:
    """Gather per-channel statistics of every MLP's gate pre-activation.

    With a text source and no loaded model, the checkpoint is read one decoder layer at a time (see
    `_layerwise`): peak memory is one layer plus the hidden states of the calibration tokens, whatever
    the model's size. Otherwise (text sampled from the model, a model passed in, `device="auto"`, or a
    family whose decoder layers cannot be rebuilt from the checkpoint's tensors as they are) the whole
    model runs with hooks on its MLPs. `device="auto"` spreads it over the available devices with
    accelerate's `device_map="auto"`.

    Args:
        checkpoint: the source.
        text: a text file, `.jsonl` (field `text`) or folder of `.txt`; None samples text from the model.
        tokens: calibration tokens wanted (the last tenth is held out for the range check).
        seed: seeds the sampled text; the same seed gives the same statistics.
        device: "cpu", "cuda[:i]", or "auto" (the whole model over every visible device).
        model: an already loaded source model (float32) to reuse.

    Raises:
        UsageError: a token count, seed or device out of range (before anything is loaded), or the text
            source is missing, empty, or needs a tokenizer the checkpoint lacks.
    """
    check_calibration_options(tokens=tokens, seed=seed, device=device)
    say = reporter(progress)
    tokenizer = checkpoint.load_tokenizer()
    layerwise = model is None and text is not None and _reads_layer_by_layer(checkpoint, device)
    if model is None and not layerwise:
        model = _load_model(checkpoint, device)
    if text is not None:
        token_text: TokenText = load_text(text, tokenizer, tokens=tokens, seq_len=seq_len)
    else:
        say(f"sampling {tokens} calibration tokens from the model (seed {seed})")
        token_text = sample_text(model, tokenizer, kind="calibration", tokens=tokens, seq_len=seq_len,
                                 seed=seed, cache_key=f"{_source_digest(checkpoint)}/float32", progress=say)
    return gather(checkpoint, token_text, model=model, device=device, seed=seed, bins=bins,
                  batch_size=batch_size, progress=say)


def gather(checkpoint: Checkpoint, token_text: TokenText, *, model=None, device: str = "cpu", seed: int = 0,
           bins: int = DEFAULT_BINS, batch_size: int = 8, progress: Progress = None) -> Stats:
    """The statistics of `token_text`: through `model` with hooks, or, with `model=None`, layer by layer
    (whole model with hooks for the families `_layerwise_supported` refuses, and for `device="auto"`)."""
    say = reporter(progress)
    layerwise = model is None and _reads_layer_by_layer(checkpoint, device)
    if model is None and not layerwise:
        model = _load_model(checkpoint, device)
    ids = token_text.ids
    heldout = max(1, ids.shape[0] // 10) if ids.shape[0] > 1 else 0
    fit_ids, held_ids = ids[: ids.shape[0] - heldout], ids[ids.shape[0] - heldout :]
    if heldout == 0:  # a single sequence: hold out its last tenth of positions instead
        cut = max(1, ids.shape[1] * 9 // 10)
        fit_ids, held_ids = ids[:, :cut], ids[:, cut:]
    units = checkpoint.adapter.units(checkpoint.config)
    moments = [_Moments() for _ in units]
    counts: list[torch.Tensor | None] = [None for _ in units]
    outside = torch.zeros(2, dtype=torch.float64)  # [outside, total] of held-out activations
    mode = ["off"]  # what the hooks do now: "moments", "histogram", "heldout" or "off"

    kept: list[list[torch.Tensor]] | None = None  # pass 1's pre-activations, when they fit in memory

    def histogram(index: int, g: torch.Tensor) -> None:
        m = moments[index]
        g = g.double().cpu()
        width = (m.max - m.min).clamp(min=1e-12)
        index_in = ((g - m.min) / width * bins).long().clamp(0, bins - 1)
        flat = index_in + torch.arange(g.shape[1]) * bins
        found = torch.bincount(flat.flatten(), minlength=g.shape[1] * bins).view(-1, bins).double()
        counts[index] = found if counts[index] is None else counts[index] + found

    def sink(index: int, g: torch.Tensor, u: torch.Tensor | None) -> None:
        if mode[0] == "moments":
            moments[index].add(g, u)
            if kept is not None:
                kept[index].append(g.detach().to("cpu", copy=True))
            return
        if mode[0] == "heldout":
            m = moments[index]
            g = g.double().cpu()
            outside[0] += ((g < m.min) | (g > m.max)).sum()
            outside[1] += g.numel()
        elif mode[0] == "histogram":
            histogram(index, g)

    energies: list[list[torch.Tensor]] = [[] for _ in units]  # per-token ||y||^2 of dense units (pass 1)

    def out_sink(index: int, y: torch.Tensor) -> None:
        if mode[0] == "moments":
            energies[index].append(y.double().pow(2).sum(-1).cpu())

    def check_seen(indices) -> None:
        unseen = [units[i].name for i in indices if moments[i].count == 0]
        if unseen:
            raise UsageError(
                f"{len(unseen)} MLP unit(s) received no calibration tokens (first: '{unseen[0]}'); an expert's "
                "statistics come only from the tokens routed to it: pass more --calibration-tokens or more "
                "varied text"
            )

    if layerwise:
        say(f"calibration, one decoder layer at a time, over {fit_ids.numel()} tokens "
            f"(+{held_ids.numel()} held out)")
        _layerwise(checkpoint, fit_ids, held_ids, batch_size=batch_size, device=device, mode=mode, sink=sink,
                   out_sink=out_sink, check_seen=check_seen, progress=say)
    else:
        first_device = _input_device(model)
        if _keeps_activations(checkpoint, fit_ids.numel()):
            kept = [[] for _ in units]
        say(f"calibration pass 1/{1 if kept is not None else 2} over {fit_ids.numel()} tokens")
        with _mlp_hooks(checkpoint, model, sink, out_sink):
            mode[0] = "moments"
            for batch in _batches(fit_ids, batch_size):
                model(input_ids=batch.to(first_device))
            check_seen(range(len(units)))
            if kept is not None:  # the histograms from what pass 1 saw: the same values, no second forward
                say("calibration histograms (from pass 1's activations), held-out range check")
                def unit_histogram(index: int) -> None:  # counts are exact integers: any order adds up the same
                    histogram(index, torch.cat(kept[index]))
                    kept[index] = []

                map_blocks(unit_histogram, list(range(len(kept))))  # bincount is single-threaded: units in parallel
                kept = None
            else:
                say("calibration pass 2/2 (histograms, held-out range check)")
                mode[0] = "histogram"
                for batch in _batches(fit_ids, batch_size):
                    model(input_ids=batch.to(first_device))
            mode[0] = "heldout"
            for batch in _batches(held_ids, batch_size):
                model(input_ids=batch.to(first_device))
            mode[0] = "off"
    stats_layers = []
    for m, c, e in zip(moments, counts, energies, strict=True):
        std = (m.m2 / max(m.count - 1, 1)).sqrt()
        per_token = torch.cat(e) if e else None
        stats_layers.append(LayerStats(
            min=m.min.float().cpu(), max=m.max.float().cpu(), mean=m.mean.float().cpu(),
            std=std.float().cpu(), up_rms=(m.up_sq / m.count).sqrt().float().cpu(),
            counts=(c if c is not None else torch.zeros(m.mean.shape[0], bins, dtype=torch.float64)).float(),
            out_energy=(None if per_token is None or per_token.numel() == 0
                        else torch.stack([per_token.mean(), per_token.median()])),
        ))
    return Stats(
        layers=stats_layers, tokens=int(fit_ids.numel()), seed=seed, source=token_text.source,
        text_digest=token_text.digest, heldout_tokens=int(held_ids.numel()),
        heldout_outside_fraction=float(outside[0] / outside[1].clamp(min=1)),
        source_digest=_source_digest(checkpoint),
    )


#: Pass 1's pre-activations are kept (and pass 2's forward skipped) while they take at most this many
#: bytes and a quarter of the memory available.
KEEP_ACTIVATIONS_BYTES = 2 * 1024**3


def _keeps_activations(checkpoint: Checkpoint, tokens: int) -> bool:
    """Whether every unit's float32 pre-activations over `tokens` fit the memory allowed for them.

    Dense models only (one unit per decoder layer, of `intermediate_size`): experts see only the tokens
    routed to them and keep the two passes.
    """
    from packager.devices import available_memory

    units = checkpoint.adapter.units(checkpoint.config)
    width = getattr(checkpoint.config, "intermediate_size", None)
    if not width or any(unit.expert is not None for unit in units) or len(units) != checkpoint.num_layers:
        return False
    needed = 4 * tokens * int(width) * len(units)
    return needed <= min(KEEP_ACTIVATIONS_BYTES, available_memory(torch.device("cpu")) // 4)


def _load_model(checkpoint: Checkpoint, device: str):
    """The whole source model in float32: on one device, or over all of them with `device="auto"`.

    `device_map="auto"` (accelerate) places whole decoder layers on the visible GPUs (then CPU) and moves
    activations between them; the hooks read pre-activations wherever they are. CI runs this path on a
    machine without GPUs (everything lands on the CPU); no multi-GPU machine has run it.
    """
    if device != "auto":
        return checkpoint.load_model(torch.float32, device)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint.path, dtype=torch.float32, device_map="auto").eval()


def _input_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


# -- one decoder layer at a time ------------------------------------------------------------------


def _skeleton(checkpoint: Checkpoint):
    """The source model's modules on the meta device (no memory), as transformers builds them."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(checkpoint.config, dtype=torch.float32).eval()


def _outside_tensors(model, checkpoint: Checkpoint) -> dict[str, torch.nn.Module]:
    """Modules outside the decoder layers that own tensors the forward up to the layers needs.

    The output head is left out: it never runs (the decoder layers' inputs are all calibration needs).
    """
    inside = {id(m) for m in checkpoint.adapter.decoder_layers(model).modules()}
    head = model.get_output_embeddings()
    skip = set() if head is None else {id(m) for m in head.modules()}
    return {name: module for name, module in model.named_modules()
            if id(module) not in inside and id(module) not in skip
            and (list(module.parameters(recurse=False)) or list(module.buffers(recurse=False)))}


def _reads_layer_by_layer(checkpoint: Checkpoint, device: str) -> bool:
    """Whether statistics are gathered one decoder layer at a time (else the whole model runs with hooks)."""
    return device != "auto" and _layerwise_supported(checkpoint)


def _layerwise_supported(checkpoint: Checkpoint) -> bool:
    """Whether the decoder layers (and what runs before them) can be read from the checkpoint as they are.

    Families whose files transformers converts on load (experts stored one by one but packed in
    memory, renamed blocks) are calibrated through the whole model instead.
    """
    try:
        model = _skeleton(checkpoint)
    except (ValueError, TypeError, RuntimeError, ImportError, KeyError):
        return False
    wanted = {}
    for i, layer in enumerate(checkpoint.adapter.decoder_layers(model)):
        wanted.update({f"{checkpoint.adapter.layers_prefix}.{i}.{k}": v for k, v in layer.state_dict().items()})
    for name, module in _outside_tensors(model, checkpoint).items():
        persistent = module.state_dict(keep_vars=True)
        own = dict(module.named_parameters(recurse=False)) | {
            k: b for k, b in module.named_buffers(recurse=False) if k in persistent}
        wanted.update({f"{name}.{k}" if name else k: v for k, v in own.items()})
    return all(checkpoint.has(key) and tuple(_shape(checkpoint, key)) == tuple(t.shape) for key, t in wanted.items())


def _shape(checkpoint: Checkpoint, key: str) -> list[int]:
    from safetensors import safe_open

    with safe_open(checkpoint.key_to_file[key], framework="pt") as handle:
        return handle.get_slice(key).get_shape()


def _materialise(model, module: torch.nn.Module, tensors: dict[str, torch.Tensor], *, strict: bool) -> None:
    """Load `tensors` into a meta `module` and rebuild its computed (non-persistent) buffers."""
    module.load_state_dict(tensors, assign=True, strict=strict)
    for sub in module.modules():
        computed = [name for name, b in sub.named_buffers(recurse=False) if b is not None and b.is_meta]
        if not computed:
            continue
        for name in computed:
            sub.register_buffer(name, torch.empty_like(getattr(sub, name), device="cpu"),
                                persistent=name not in sub._non_persistent_buffers_set)
        # transformers' own init computes rotary frequencies and embedding scales, and may also re-draw the
        # weights the module owns: those are set aside (meta stand-ins absorb the init) and put back.
        loaded = dict(sub.named_parameters(recurse=False))
        for name, tensor in loaded.items():
            setattr(sub, name, torch.nn.Parameter(torch.empty_like(tensor, device="meta"), requires_grad=False))
        model._init_weights(sub)
        for name, tensor in loaded.items():
            setattr(sub, name, tensor)
    left = [n for n, t in [*module.named_parameters(recurse=strict), *module.named_buffers(recurse=strict)]
            if t.is_meta]
    if left:
        raise RuntimeError(f"calibration could not rebuild {left[0]!r} of {type(module).__name__}")


class _Catcher(torch.nn.Module):
    """Stands in for decoder layer `index`: records the arguments the model passes it, returns its input."""

    def __init__(self, index: int, calls: dict, template: torch.nn.Module) -> None:
        super().__init__()
        self.index, self.calls = index, calls
        for name in ("attention_type", "is_block_boundary", "layer_idx", "is_sliding"):  # read by some loops
            if hasattr(template, name):
                setattr(self, name, getattr(template, name))

    def forward(self, hidden_states, *args, **kwargs):
        self.calls[self.index] = (args, kwargs)
        if self.index == 0:
            self.calls["input"] = hidden_states
        return hidden_states


def _layerwise(checkpoint: Checkpoint, fit_ids: torch.Tensor, held_ids: torch.Tensor, *, batch_size: int,
               device: str, mode: list[str], sink, out_sink, check_seen, progress) -> None:
    """Run the calibration passes one decoder layer at a time, reading each layer from the checkpoint.

    The model's own forward runs once per batch with every decoder layer replaced by a stand-in that
    records the layer's arguments (position embeddings, masks per layer type) and the embeddings. Then,
    per layer: its tensors are read, pass 1 (moments) and pass 2 (histograms, held-out check) run on the
    same stored inputs, its outputs become the next layer's inputs, and the layer is freed. Memory: one
    layer, plus the hidden states of every calibration token twice (inputs and outputs).
    """
    model = _skeleton(checkpoint)
    layers = checkpoint.adapter.decoder_layers(model)
    prefix = checkpoint.adapter.layers_prefix + "."
    outside = _outside_tensors(model, checkpoint)
    for name, module in outside.items():
        persistent = set(module.state_dict())
        own = [k for k, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
               if k in persistent]
        _materialise(model, module, {k: checkpoint.tensor(f"{name}.{k}" if name else k).float() for k in own},
                     strict=False)
        module.to(device)
    templates = list(layers)
    count = len(templates)
    calls: dict = {}
    for i in range(count):
        layers[i] = _Catcher(i, calls, templates[i])
    batches = [("fit", b) for b in _batches(fit_ids, batch_size)]
    batches += [("held", b) for b in _batches(held_ids, batch_size)]
    base = getattr(model, model.base_model_prefix)
    states, arguments = [], []
    for _, batch in batches:
        base(input_ids=batch.to(device), use_cache=False)
        states.append(calls.pop("input"))
        arguments.append([calls.pop(i) for i in range(count)])
    for module in outside.values():
        module.to("meta")  # the embeddings are no longer needed: free them
    for i in range(count):
        layers[i] = templates[i]  # the hooks find every unit; only the layer being calibrated ever runs
    units = checkpoint.adapter.units(checkpoint.config)
    for i in range(count):
        layer = templates[i]
        _materialise(model, layer, {name: checkpoint.tensor(f"{prefix}{i}.{name}").float()
                                    for name in layer.state_dict()}, strict=True)
        layer.to(device)
        with _mlp_hooks(checkpoint, model, sink, out_sink):
            outputs = []
            for (kind, _), state, args in zip(batches, states, arguments, strict=True):
                mode[0] = "moments" if kind == "fit" else "off"
                outputs.append(layer(state, *args[i][0], **args[i][1]))
            check_seen([u.index for u in units if u.layer == i])
            for (kind, _), state, args in zip(batches, states, arguments, strict=True):
                mode[0] = "histogram" if kind == "fit" else "heldout"
                layer(state, *args[i][0], **args[i][1])
            mode[0] = "off"
        states = outputs
        layer.to("meta")  # frees the layer's memory
        progress(f"  layer {i + 1}/{count} calibrated")


def _source_digest(checkpoint: Checkpoint) -> str:
    from packager.formats.files import sha256_text

    return sha256_text(json.dumps(checkpoint.file_digests(), sort_keys=True))
