"""Write a release folder: statistics + source weights -> release tensors, config, loader, record.

Streams the source: non-MLP tensors are copied one at a time and each MLP is transformed on its own,
so memory holds one output shard plus one layer. Written atomically (see `release_dir`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from packager import TRANSFORMERS_RANGE, __version__
from packager.architectures import Unit
from packager.calibrate import Stats
from packager.checkpoint import Checkpoint
from packager.errors import UsageError
from packager.record import payload_digests, write_record
from packager.release_dir import atomic_folder
from packager.secret import Secret
from packager.series.activations import get_activation
from packager.transform import (
    FITS,
    Hardening,
    LayerPlan,
    SourceMLP,
    allocation_orders,
    boost_channels,
    build_layer,
    fit_layer,
    layer_generator,
    secret_id,
)

FORMAT_VERSION = 1
RUNTIME_DIR = Path(__file__).resolve().parent / "runtime"
RUNTIME_FILES = ("configuration_unswift.py", "modeling_unswift.py")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_SHARD_BYTES = 2 * 1024**3
ALLOCATIONS = ("boost", "uniform")
#: Highest series order accepted: `--slowdown` needs high orders to reach large slowdowns on small models.
MAX_ORDER = 128
#: `--slowdown` accepts (1, MAX_SLOWDOWN].
MAX_SLOWDOWN = 64.0


@dataclass(frozen=True)
class ConvertOptions:
    """Every option that changes a byte of the release (recorded in config.json["unswift"]).

    `slowdown` (when set) asks for that decode slowdown: order and coverage are then chosen by
    `packager.autoslowdown`, and `order`/`coverage` hold the choice once it is made.
    """

    order: int = 8
    coverage: float | None = None  # None: auto
    slowdown: float | None = None  # None: order and coverage as given
    fit: str = "weighted"
    allocation: str = "boost"  # "boost": per-channel orders N-1 / 2N at the bytes of order N (weighted fit)
    hardening: bool = True
    dtype: str | None = None  # None: the source's
    min_top1: float = 0.995
    license: str | None = None
    base_model: str | None = None
    max_shard_bytes: int = DEFAULT_SHARD_BYTES

    def validate(self) -> None:
        """Raise UsageError for an impossible option before any work is done."""
        if not isinstance(self.order, int) or self.order < 1:
            raise UsageError(f"--order {self.order} is invalid: the series needs order >= 1")
        if self.order > MAX_ORDER:
            raise UsageError(f"--order {self.order} is too large: use at most {MAX_ORDER}")
        if self.slowdown is not None and not (1.0 < self.slowdown <= MAX_SLOWDOWN):
            raise UsageError(f"--slowdown {self.slowdown} is outside (1, {MAX_SLOWDOWN:g}]: pass the decode "
                             "slowdown wanted, e.g. --slowdown 4")
        if self.max_shard_bytes < 1:
            raise UsageError(f"--max-shard-size {self.max_shard_bytes} is invalid: pass a size such as 1GB")
        if self.coverage is not None and not (0.0 < self.coverage <= 1.0):
            raise UsageError(
                f"--coverage {self.coverage} is outside (0, 1]: pass a fraction such as 0.7, or auto")
        if self.fit not in FITS:
            raise UsageError(f"--fit {self.fit!r} is unknown; choose one of {', '.join(FITS)}")
        if self.allocation not in ALLOCATIONS:
            raise UsageError(f"--allocation {self.allocation!r} is unknown; choose one of {', '.join(ALLOCATIONS)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise UsageError(f"--dtype {self.dtype!r} is unknown; choose one of {', '.join(DTYPES)}")
        if not (0.0 < self.min_top1 <= 1.0):
            raise UsageError(f"--min-top1 {self.min_top1} is outside (0, 1]")

    @property
    def hardening_scheme(self) -> Hardening:
        return Hardening() if self.hardening else Hardening.paper()


@dataclass(frozen=True)
class ConvertResult:
    release_dir: Path
    spec: dict
    release_bytes: int
    source_bytes: int
    coverage_trials: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "release_dir": str(self.release_dir), "order": self.spec["order"],
            "coverage": self.spec["coverage"],
            "fit": self.spec["fit"], "hardening": self.spec["hardening"]["enabled"],
            "release_bytes": self.release_bytes, "source_bytes": self.source_bytes,
            "coverage_trials": self.coverage_trials,
        }


def mlp_units(checkpoint: Checkpoint) -> list[Unit]:
    """The MLP units the release replaces: one per dense layer, one per expert (see `Adapter.units`)."""
    return checkpoint.adapter.units(checkpoint.config)


def source_mlp(checkpoint: Checkpoint, unit: Unit | int) -> SourceMLP:
    """Read one MLP unit's tensors from the checkpoint (float64); an int is a unit index."""
    if isinstance(unit, int):
        unit = mlp_units(checkpoint)[unit]
    parts = checkpoint.adapter.read_mlp(checkpoint, unit)
    return SourceMLP(**{name: tensor.double() for name, tensor in parts.items()})


def plan_layers(checkpoint: Checkpoint, stats: Stats, options: ConvertOptions) -> list[LayerPlan]:
    """Fit every channel of every MLP unit (cheap: statistics plus down-column norms)."""
    units = mlp_units(checkpoint)
    if len(stats.layers) != len(units):
        raise UsageError(
            f"statistics have {len(stats.layers)} MLP units but the checkpoint has {len(units)}; "
            "they come from another model: re-run `unswift calibrate` on this checkpoint"
        )
    activation = get_activation(checkpoint.adapter.activation_name(checkpoint.config))
    plans = []
    for unit, layer_stats in zip(units, stats.layers, strict=True):
        down = checkpoint.adapter.read_mlp(checkpoint, unit, parts=("down",))["down"].double()
        if down.shape[1] != layer_stats.min.numel():
            raise UsageError(
                f"statistics of '{unit.name}' do not match the checkpoint's MLP width; re-calibrate")
        plans.append(fit_layer(activation, layer_stats, down.norm(dim=0), order=options.order,
                               fit=options.fit, normalise=options.hardening_scheme.normalise,
                               allocation=options.allocation))
    return plans


def layer_tensors(checkpoint: Checkpoint, plans: list[LayerPlan], masks: list[torch.Tensor],
                  options: ConvertOptions, secret: bytes, layer: int,
                  boosts: list[torch.Tensor] | None = None, *, source: SourceMLP | None = None
                  ) -> dict[str, torch.Tensor]:
    """The release tensors of MLP unit `layer` (a layer's MLP or an expert), named as released (float64).

    With order allocation (`boosts`), the unit's channels form groups released one after the other:
    base-order channels, boost-order channels, then plaintext channels (docs/FORMAT.md, "groups").
    `source` replaces the unit's tensors read from the checkpoint (e.g. a block of down rows: theta's
    rows depend only on them, see `write_release`).
    """
    unit = mlp_units(checkpoint)[layer]
    source = source if source is not None else source_mlp(checkpoint, unit)
    plan, scheme = plans[layer], options.hardening_scheme
    if boosts is None:
        tensors = build_layer(source, plan.fit, masks[layer], scheme, layer_generator(secret, layer))
    else:
        boosted = boosts[layer]
        groups = [(plan.base, masks[layer] & ~boosted), (plan.boost, boosted)]
        parts = [build_layer(source, fit, mask, scheme, layer_generator(secret, layer, group))
                 for group, (fit, mask) in enumerate(groups)]
        tensors = _join_groups(parts, [int(mask.sum()) for _, mask in groups], masks[layer], source.up is not None,
                               build_layer(source, plan.fit, masks[layer], scheme, layer_generator(secret, layer, 2)))
    return {unit.prefix + name: value for name, value in tensors.items()}


def _join_groups(parts: list[dict[str, torch.Tensor]], counts: list[int], expanded: torch.Tensor, gated: bool,
                 plain_part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate the expanded channels of each group's `build_layer` output, then the plaintext ones.

    Each part holds its group's channels first (rows and theta columns), so slicing them out keeps each
    group's own secret signs, scales and permutation; the plaintext channels come from `plain_part`.
    """
    intermediate = expanded.numel()
    total = int(expanded.sum())
    halves = 2 if gated else 1

    def rows(t: torch.Tensor, count: int, start: int = 0) -> list[torch.Tensor]:
        return [t[h * intermediate + start : h * intermediate + start + count] for h in range(halves)]

    joined: dict[str, torch.Tensor] = {}
    for name in ("in_proj.weight", "in_proj.bias"):
        blocks = [rows(part[name], count) for part, count in zip(parts, counts, strict=True)]
        plain = rows(plain_part[name], intermediate - total, total)
        joined[name] = torch.cat([b for h in range(halves) for b in [*(blk[h] for blk in blocks), plain[h]]])
    columns = []
    for part, count in zip(parts, counts, strict=True):
        per_channel = (part["theta"].shape[1] - (intermediate - count)) // max(count, 1)
        columns.append(part["theta"][:, : count * per_channel])
    plain_columns = plain_part["theta"].shape[1] - (intermediate - total)
    joined["theta"] = torch.cat([*columns, plain_part["theta"][:, plain_columns:]], dim=1)
    if "out_bias" in plain_part:
        joined["out_bias"] = plain_part["out_bias"]
    return joined


def release_spec(checkpoint: Checkpoint, stats: Stats, options: ConvertOptions, masks: list[torch.Tensor],
                 plans: list[LayerPlan], secret: bytes, dtype_name: str,
                 boosts: list[torch.Tensor] | None = None) -> dict:
    """config.json["unswift"]: every parameter of the transform (the one source of truth)."""
    adapter = checkpoint.adapter
    hidden_act = adapter.activation_name(checkpoint.config)
    expanded = sum(int(m.sum()) for m in masks)
    total = sum(m.numel() for m in masks)
    fit = plans[0].fit
    units = mlp_units(checkpoint)
    has_down_bias = "down_bias" in adapter.read_mlp(checkpoint, units[0], parts=("down_bias",))
    return {
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "base_model_type": adapter.base_model_type,
        "family": adapter.family,
        "hidden_act": hidden_act,
        "activation": get_activation(hidden_act).name,
        "gated": adapter.gated,
        "order": options.order,
        "basis": fit.basis,
        "extrapolation": fit.extrapolation,
        "fit": options.fit,
        "fit_parameters": _fit_parameters(options),
        "coverage": expanded / total,
        "requested_coverage": "auto" if options.coverage is None else options.coverage,
        "min_top1": options.min_top1,
        "layers": [{"unit": unit.name, "intermediate": int(m.numel()), "expanded": int(m.sum()),
                    **_groups(m, None if boosts is None else boosts[i], options.order)}
                   for i, (unit, m) in enumerate(zip(units, masks, strict=True))],
        "allocation": _allocation(options, boosts, masks),
        "experts": adapter.runtime_spec(),
        "out_bias": has_down_bias,
        "hardening": {"enabled": options.hardening, **options.hardening_scheme.to_json(),
                      "secret_id": secret_id(secret)},
        "calibration": stats.summary(),
        "dtype": dtype_name,
        "transformers": TRANSFORMERS_RANGE,
    }


def _groups(mask: torch.Tensor, boosted: torch.Tensor | None, order: int) -> dict:
    """The unit's channel groups (base order, boost order), in release order; nothing when uniform."""
    if boosted is None:
        return {}
    base, boost = allocation_orders(order)
    return {"groups": [{"channels": int((mask & ~boosted).sum()), "order": base},
                       {"channels": int(boosted.sum()), "order": boost}]}


def _allocation(options: ConvertOptions, boosts: list[torch.Tensor] | None, masks: list[torch.Tensor]) -> dict:
    if boosts is None:
        return {"kind": "uniform", "order": options.order}
    base, boost = allocation_orders(options.order)
    boosted, expanded = sum(int(b.sum()) for b in boosts), sum(int(m.sum()) for m in masks)
    return {"kind": "boost", "base_order": base, "boost_order": boost, "boosted_channels": boosted,
            "expanded_channels": expanded,
            "columns_per_expanded_channel": (boosted * (boost + 1) + (expanded - boosted) * (base + 1))
            / max(expanded, 1)}


def _fit_parameters(options: ConvertOptions) -> dict:
    from packager.series.fit import TRIM_CANDIDATES, UNIFORM_FLOOR

    if options.fit == "taylor":
        return {"centre": "midpoint of calibrated range", "coefficients": "f^(n)(z0)/n!",
                "normalised": options.hardening_scheme.normalise}
    return {"basis": "chebyshev", "weights": "calibrated density", "uniform_floor": UNIFORM_FLOOR,
            "trim_candidates": list(TRIM_CANDIDATES), "extrapolation": "linear",
            "selection": "global, by expected output error"}


def release_config(checkpoint: Checkpoint, spec: dict) -> dict:
    config = json.loads((checkpoint.path / "config.json").read_text())
    adapter = checkpoint.adapter
    config["model_type"] = f"unswift_{adapter.base_model_type}"
    config["architectures"] = [adapter.runtime_classes()["AutoModelForCausalLM"].split(".")[-1]]
    config["auto_map"] = adapter.runtime_classes()
    config["dtype"] = spec["dtype"]
    config.pop("torch_dtype", None)
    config["unswift"] = spec
    return config


class _ShardWriter:
    """Accumulates tensors and writes safetensors shards of at most `limit` bytes."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder, self.limit = folder, limit
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []
        self.total_bytes = 0

    def reserve(self, size: int) -> None:
        """Write the pending shard now if a tensor of `size` bytes would not fit beside it.

        Called before a large tensor is built, so memory never holds a full shard and that tensor too.
        """
        if self.pending and self.pending_bytes + size > self.limit:
            self.flush()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        self.reserve(size)
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        if not self.pending:
            return
        index = len(self.shards)
        save_file(self.pending, str(self.folder / f".shard-{index:05d}.safetensors"),
                  metadata={"format": "pt", "unswift_format_version": str(FORMAT_VERSION)})
        self.shards.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> list[str]:
        self.flush()
        count = len(self.shards)
        names = ["model.safetensors"] if count == 1 else [
            f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        for i, name in enumerate(names):
            (self.folder / f".shard-{i:05d}.safetensors").rename(self.folder / name)
        if count > 1:
            weight_map = {key: names[i] for i, keys in enumerate(self.shards) for key in keys}
            index = {"metadata": {"total_size": self.total_bytes},
                     "weight_map": dict(sorted(weight_map.items()))}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return names


#: Float64 working memory of one block of theta rows while a unit is transformed.
THETA_BLOCK_BYTES = 256 * 1024**2


def _write_unit(writer: _ShardWriter, checkpoint: Checkpoint, plans: list[LayerPlan], masks: list[torch.Tensor],
                options: ConvertOptions, secret: bytes, index: int, boosts: list[torch.Tensor] | None,
                dtype: torch.dtype) -> None:
    """Transform one MLP unit and hand its tensors to the writer, with bounded working memory.

    theta ([H, S(N+1) + P], the large one) is built `THETA_BLOCK_BYTES` of float64 at a time: its rows
    depend only on the same rows of the down projection, so each block is transformed from a block of
    down rows (and zero-width gate/up, whose in_proj rows come from the first block only), cast, and
    copied into the release tensor. The secret draws do not depend on the rows, so the result is the
    same as one whole-unit transform.
    """
    unit = mlp_units(checkpoint)[index]
    parts = checkpoint.adapter.read_mlp(checkpoint, unit)  # source dtype; build_layer widens what it uses
    full = SourceMLP(**parts)
    hidden = full.down.shape[0]
    head = max(1, min(hidden, 16))
    first = layer_tensors(checkpoint, plans, masks, options, secret, index, boosts,
                          source=replace(full, down=full.down[:head],
                                         down_bias=None if full.down_bias is None else full.down_bias[:head]))
    columns = first[unit.prefix + "theta"].shape[1]
    size = torch.empty((), dtype=dtype).element_size()
    writer.reserve(size * (hidden * columns + sum(t.numel() for n, t in first.items() if not n.endswith("theta"))))
    theta = torch.empty(hidden, columns, dtype=dtype)
    theta[:head] = first.pop(unit.prefix + "theta")
    thin = replace(full, gate=full.gate[:, :0], up=None if full.up is None else full.up[:, :0])
    step = max(1, THETA_BLOCK_BYTES // (8 * columns * 4))  # float64; the allocation builds ~4 copies
    for start in range(head, hidden, step):
        rows = slice(start, min(start + step, hidden))
        block = layer_tensors(checkpoint, plans, masks, options, secret, index, boosts,
                              source=replace(thin, down=full.down[rows], down_bias=None))
        theta[rows] = block[unit.prefix + "theta"]
        del block
    first.pop(unit.prefix + "out_bias", None)
    for name, tensor in first.items():
        writer.add(name, tensor.to(dtype))
    writer.add(unit.prefix + "theta", theta)
    if full.down_bias is not None:
        writer.add(unit.prefix + "out_bias", full.down_bias.double().to(dtype))


def write_release(checkpoint: Checkpoint, out: Path, *, stats: Stats, options: ConvertOptions,
                  plans: list[LayerPlan], masks: list[torch.Tensor], secret: Secret, overwrite: bool,
                  progress: Callable[[str], None] | None = None, extra_record: dict | None = None,
                  ) -> ConvertResult:
    """Write the release folder atomically and return what was written."""
    say = progress or (lambda _msg: None)
    dtype_name = options.dtype or _dtype_name(_source_dtype(checkpoint))
    dtype = DTYPES[dtype_name]
    boosts = boost_channels(plans, masks, options.order)
    spec = release_spec(checkpoint, stats, options, masks, plans, secret.value, dtype_name, boosts)
    adapter = checkpoint.adapter
    mlp_prefixes = adapter.source_prefixes(checkpoint.config)
    units = mlp_units(checkpoint)
    with atomic_folder(out, overwrite=overwrite) as staging:
        writer = _ShardWriter(staging, options.max_shard_bytes)
        for key in sorted(checkpoint.key_to_file):
            if not key.startswith(mlp_prefixes):
                tensor = checkpoint.tensor(key)
                tensor = tensor.to(dtype) if tensor.is_floating_point() else tensor
                writer.add(adapter.release_key(key), tensor)
        for index, unit in enumerate(units):
            say(f"MLP {index + 1}/{len(units)} ({unit.name}): {int(masks[index].sum())} channels expanded")
            _write_unit(writer, checkpoint, plans, masks, options, secret.value, index, boosts, dtype)
        shard_names = writer.finish()
        config = release_config(checkpoint, spec)
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=False) + "\n")
        for name in RUNTIME_FILES:
            shutil.copyfile(RUNTIME_DIR / name, staging / name)
        for file in [*checkpoint.tokenizer_files, *checkpoint.license_files]:
            shutil.copyfile(file, staging / file.name)
        if (checkpoint.path / "generation_config.json").is_file():
            shutil.copyfile(checkpoint.path / "generation_config.json", staging / "generation_config.json")
        source_bytes = sum(f.stat().st_size for f in checkpoint.weight_files)
        release_bytes = sum((staging / n).stat().st_size for n in shard_names)
        record = initial_record(checkpoint, options, spec, stats, source_bytes, release_bytes,
                                extra_record or {})
        record["payload"] = payload_digests(staging)
        write_record(staging, record)
    trials = (extra_record or {}).get("coverage_trials", [])
    return ConvertResult(out, spec, release_bytes, source_bytes, trials)


def plan(checkpoint: Checkpoint, options: ConvertOptions, *, context: int | None = None) -> dict:
    """What converting with `options` would produce, from the checkpoint's headers alone (`--dry-run`).

    Nothing is calibrated, loaded or written. Channels are assumed expanded in the same share in every
    MLP unit (the real selection is global; for dense models of one width the sizes are the same).
    With `--coverage auto` or `--slowdown`, the final choice is made by measurement: the figures are
    those of the first candidate, and every candidate is listed.

    Returns:
        JSON fields: dry_run, order, coverage ('auto' when measured later), dtype, release_bytes,
        source_bytes, memory (per dtype: weights_bytes, kv_cache_bytes, total_bytes, context),
        predicted_decode_slowdown, context, candidates, and slowdown (with `options.slowdown`).
    """
    from packager.bench import DEFAULT_CONTEXT
    from packager.sizing import ReleaseSizer, dominant_dtype, plan_json

    options.validate()
    context = context or DEFAULT_CONTEXT
    dtype = options.dtype or dominant_dtype(ReleaseSizer(checkpoint, dtype="float32").source)
    sizer = ReleaseSizer(checkpoint, dtype=dtype)
    out: dict = {"dry_run": True, "source": checkpoint.name, "dtype": dtype, "fit": options.fit,
                 "mlp_channels": sizer.channels}
    if options.slowdown is not None:
        from packager.autoslowdown import candidate_orders

        choices = candidate_orders(sizer, options.slowdown, context=context, max_order=MAX_ORDER)
        candidates = [plan_json(sizer, order, sizer.uniform(coverage), context=context) for order, coverage in choices]
        out.update(candidates[0])
        out["slowdown"] = {"requested": options.slowdown, "basis": "bytes model only; convert refines it by "
                           "timing on the publishing machine and picks the candidate of best measured fidelity"}
    elif options.coverage is None:
        from packager.autocoverage import CANDIDATES

        candidates = [plan_json(sizer, options.order, sizer.uniform(c), context=context) for c in CANDIDATES]
        out.update(candidates[0])
        out["coverage"] = "auto"
    else:
        candidates = [plan_json(sizer, options.order, sizer.uniform(options.coverage), context=context)]
        out.update(candidates[0])
    out["candidates"] = candidates
    return out


def _source_dtype(checkpoint: Checkpoint) -> torch.dtype:
    """The dtype of the source's MLP weights (of its first unit, read through the adapter)."""
    return checkpoint.adapter.read_mlp(checkpoint, mlp_units(checkpoint)[0], parts=("down",))["down"].dtype


def _dtype_name(dtype: torch.dtype) -> str:
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    return "float32"


def initial_record(checkpoint: Checkpoint, options: ConvertOptions, spec: dict, stats: Stats,
                   source_bytes: int, release_bytes: int, extra: dict) -> dict:
    """unswift.json as convert leaves it: measurements empty until eval/bench/audit fill them."""
    from packager.digest import sha256_text

    license_name = options.license or _license_from_config(checkpoint)
    return {
        "format_version": FORMAT_VERSION,
        "tool": {"name": "unswift", "version": __version__},
        "transformers": TRANSFORMERS_RANGE,
        "source": {
            "name": checkpoint.name, "base_model": options.base_model, "license": license_name,
            "model_type": checkpoint.config.model_type,
            "architecture": (checkpoint.config.architectures or [None])[0],
            "dtype": _dtype_name(_source_dtype(checkpoint)), "num_parameters": checkpoint.num_parameters(),
            "files": checkpoint.file_digests(),
        },
        "transform": spec,
        "calibration": stats.summary(),
        "inputs": {"source": stats.source_digest, "options": sha256_text(json.dumps(
            {k: v for k, v in options.__dict__.items() if k not in ("license", "base_model")},
            sort_keys=True))},
        "size": {"release_bytes": release_bytes, "source_bytes": source_bytes},
        "coverage_trials": extra.get("coverage_trials", []),
        "slowdown": extra.get("slowdown"),
        "eval": None,
        "bench": [],
        "audit": None,
        "signing": {"key_fingerprint": None},
        "payload": {},
    }


def _license_from_config(checkpoint: Checkpoint) -> str | None:
    return getattr(checkpoint.config, "license", None)
