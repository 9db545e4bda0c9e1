"""Calibration: per-channel statistics of every MLP's gate pre-activation, from text.

Two passes over the calibration text with forward hooks: the first gathers min, max, mean and variance
(float64, merged per batch with Chan's parallel formula) and the RMS of the up projection; the second
fills a fixed-width histogram per channel over [min, max]. The last tenth of the sequences is held out
and only counted: how often held-out activations fall outside the calibrated range.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from packager.checkpoint import Checkpoint
from packager.errors import UsageError
from packager.series.fit import Histogram
from packager.text import TokenText, load_text, sample_text

STATS_FORMAT = 1
DEFAULT_TOKENS = 16384
DEFAULT_SEQ_LEN = 512
DEFAULT_BINS = 256


@dataclass(frozen=True)
class LayerStats:
    """Statistics of one MLP unit's gate pre-activations g (and up projections u), one entry per channel.

    A unit is a dense layer's MLP, a routed expert or a shared expert (`Adapter.units`); `Stats.layers`
    holds one entry per unit, in that order (for dense models, one per layer).
    """

    min: torch.Tensor
    max: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    up_rms: torch.Tensor
    counts: torch.Tensor  # [channels, bins] over [min, max]

    @property
    def histogram(self) -> Histogram:
        return Histogram(self.min.double(), self.max.double(), self.counts.double())


@dataclass(frozen=True)
class Stats:
    """A calibration: per-layer statistics plus what produced them (recorded in the release)."""

    layers: list[LayerStats]
    tokens: int
    seed: int
    source: str
    text_digest: str
    heldout_tokens: int
    heldout_outside_fraction: float
    source_digest: str

    def summary(self) -> dict:
        return {
            "tokens": self.tokens, "seed": self.seed, "source": self.source, "text_digest": self.text_digest,
            "heldout_tokens": self.heldout_tokens,
            "heldout_outside_fraction": self.heldout_outside_fraction,
            "bins": int(self.layers[0].counts.shape[-1]) if self.layers else 0,
        }

    def save(self, path: Path) -> None:
        tensors = {}
        for i, layer in enumerate(self.layers):
            for name in ("min", "max", "mean", "std", "up_rms", "counts"):
                tensors[f"layers.{i}.{name}"] = getattr(layer, name).contiguous()
        meta = {"format": "pt", "unswift_stats_format": str(STATS_FORMAT), "summary": json.dumps(
            {**self.summary(), "source_digest": self.source_digest, "layers": len(self.layers)})}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Stats:
        from safetensors import safe_open

        if not Path(path).is_file():
            raise UsageError(f"statistics file '{path}' not found; create it with `unswift calibrate`")
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        if meta.get("unswift_stats_format") != str(STATS_FORMAT):
            raise UsageError(f"'{path}' is not an unswift statistics file (format {STATS_FORMAT})")
        summary = json.loads(meta["summary"])
        tensors = load_file(str(path))
        layers = [
            LayerStats(**{name: tensors[f"layers.{i}.{name}"] for name in
                          ("min", "max", "mean", "std", "up_rms", "counts")})
            for i in range(summary["layers"])
        ]
        return cls(layers, summary["tokens"], summary["seed"], summary["source"], summary["text_digest"],
                   summary["heldout_tokens"], summary["heldout_outside_fraction"], summary["source_digest"])


@contextlib.contextmanager
def _mlp_hooks(checkpoint: Checkpoint, model, sink: Callable[[int, torch.Tensor, torch.Tensor | None], None]
               ) -> Iterator[None]:
    """Call sink(unit, g, u) with the pre-activations every MLP unit sees; the hooks are always removed.

    A routed expert's unit only sees the tokens routed to it (see `Adapter.taps`).
    """
    handles = []
    for module, tap in checkpoint.adapter.taps(model):
        def hook(module, args, kwargs, tap=tap):
            for index, g, u in tap(module, args, kwargs):
                sink(index, g.reshape(-1, g.shape[-1]), None if u is None else u.reshape(-1, u.shape[-1]))
        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
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


@torch.no_grad()
def calibrate(
    checkpoint: Checkpoint, *, text: str | Path | None = None, tokens: int = DEFAULT_TOKENS,
    seed: int = 0, seq_len: int = DEFAULT_SEQ_LEN, bins: int = DEFAULT_BINS, device: str = "cpu",
    batch_size: int = 8, progress: Callable[[str], None] | None = None, model=None,
) -> Stats:
    """Gather per-channel statistics of every MLP's gate pre-activation.

    Args:
        checkpoint: the source.
        text: a text file, `.jsonl` (field `text`) or folder of `.txt`; None samples text from the model.
        tokens: calibration tokens wanted (the last tenth is held out for the range check).
        seed: seeds the sampled text; the same seed gives the same statistics.
        model: an already loaded source model (float32) to reuse.

    Raises:
        UsageError: the text source is missing, empty, or needs a tokenizer the checkpoint lacks.
    """
    if tokens < 32:
        raise UsageError(
            f"--calibration-tokens {tokens} is too small; use at least 32 (default {DEFAULT_TOKENS})")
    say = progress or (lambda _msg: None)
    model = model if model is not None else checkpoint.load_model(torch.float32, device)
    tokenizer = checkpoint.load_tokenizer()
    if text is not None:
        token_text: TokenText = load_text(text, tokenizer, tokens=tokens, seq_len=seq_len)
    else:
        say(f"sampling {tokens} calibration tokens from the model (seed {seed})")
        token_text = sample_text(model, tokenizer, kind="calibration", tokens=tokens, seq_len=seq_len,
                                 seed=seed, cache_key=f"{_source_digest(checkpoint)}/float32")
    ids = token_text.ids
    heldout = max(1, ids.shape[0] // 10) if ids.shape[0] > 1 else 0
    fit_ids, held_ids = ids[: ids.shape[0] - heldout], ids[ids.shape[0] - heldout :]
    if heldout == 0:  # a single sequence: hold out its last tenth of positions instead
        cut = max(1, ids.shape[1] * 9 // 10)
        fit_ids, held_ids = ids[:, :cut], ids[:, cut:]
    units = checkpoint.adapter.units(checkpoint.config)
    moments = [_Moments() for _ in units]

    def first(index: int, g: torch.Tensor, u: torch.Tensor | None) -> None:
        moments[index].add(g, u)

    say(f"calibration pass 1/2 over {fit_ids.numel()} tokens")
    with _mlp_hooks(checkpoint, model, first):
        for batch in _batches(fit_ids, batch_size):
            model(input_ids=batch.to(device))
    unseen = [unit.name for unit, m in zip(units, moments, strict=True) if m.count == 0]
    if unseen:
        raise UsageError(
            f"{len(unseen)} MLP unit(s) received no calibration tokens (first: '{unseen[0]}'); an expert's "
            "statistics come only from the tokens routed to it: pass more --calibration-tokens or more "
            "varied text"
        )
    counts = [torch.zeros(m.mean.shape[0], bins, dtype=torch.float64) for m in moments]
    outside = torch.zeros(2, dtype=torch.float64)  # [outside, total] of held-out activations
    counting_heldout = [False]

    def second(index: int, g: torch.Tensor, u: torch.Tensor | None) -> None:
        m = moments[index]
        g = g.double().cpu()
        if counting_heldout[0]:
            outside[0] += ((g < m.min) | (g > m.max)).sum()
            outside[1] += g.numel()
            return
        width = (m.max - m.min).clamp(min=1e-12)
        index_in = ((g - m.min) / width * bins).long().clamp(0, bins - 1)
        flat = index_in + torch.arange(g.shape[1]) * bins
        counts[index] += torch.bincount(flat.flatten(), minlength=g.shape[1] * bins).view(-1, bins).double()

    say("calibration pass 2/2 (histograms, held-out range check)")
    with _mlp_hooks(checkpoint, model, second):
        for batch in _batches(fit_ids, batch_size):
            model(input_ids=batch.to(device))
        counting_heldout[0] = True
        for batch in _batches(held_ids, batch_size):
            model(input_ids=batch.to(device))
    stats_layers = []
    for m, c in zip(moments, counts, strict=True):
        std = (m.m2 / max(m.count - 1, 1)).sqrt()
        stats_layers.append(LayerStats(
            min=m.min.float().cpu(), max=m.max.float().cpu(), mean=m.mean.float().cpu(),
            std=std.float().cpu(),
            up_rms=(m.up_sq / m.count).sqrt().float().cpu(), counts=c.float(),
        ))
    return Stats(
        layers=stats_layers, tokens=int(fit_ids.numel()), seed=seed, source=token_text.source,
        text_digest=token_text.digest, heldout_tokens=int(held_ids.numel()),
        heldout_outside_fraction=float(outside[0] / outside[1].clamp(min=1)),
        source_digest=_source_digest(checkpoint),
    )


def _source_digest(checkpoint: Checkpoint) -> str:
    from packager.digest import sha256_text

    return sha256_text(json.dumps(checkpoint.file_digests(), sort_keys=True))
