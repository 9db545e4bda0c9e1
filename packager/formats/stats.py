"""The statistics file `unswift calibrate` writes: safetensors tensors per unit plus a JSON summary.

`--stats FILE` reuses a calibration; the file records what produced it (tokens, seed, text source and
digest, the source checkpoint's digest), so a release can say what it was calibrated on. Each dense unit
also has `layers.{i}.out_energy` (float64 [2]: mean and median over tokens of the MLP output's squared
norm), which the padding criterion needs; files written before it existed load without it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file, save_file

from packager.errors import UsageError
from packager.maths.statistics import LayerStats

STATS_FORMAT = 1


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
            "units_with_output_energy": sum(layer.out_energy is not None for layer in self.layers),
        }

    def save(self, path: Path) -> None:
        tensors = {}
        for i, layer in enumerate(self.layers):
            for name in ("min", "max", "mean", "std", "up_rms", "counts"):
                tensors[f"layers.{i}.{name}"] = getattr(layer, name).contiguous()
            if layer.out_energy is not None:
                tensors[f"layers.{i}.out_energy"] = layer.out_energy.double().contiguous()
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
                          ("min", "max", "mean", "std", "up_rms", "counts")},
                       out_energy=tensors.get(f"layers.{i}.out_energy"))
            for i in range(summary["layers"])
        ]
        return cls(layers, summary["tokens"], summary["seed"], summary["source"], summary["text_digest"],
                   summary["heldout_tokens"], summary["heldout_outside_fraction"], summary["source_digest"])
