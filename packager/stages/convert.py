"""Write a release folder: statistics + source weights -> release tensors, config, loader, record.

Streams the source: non-MLP tensors are copied one at a time and each MLP unit is transformed on its
own, straight into the release dtype. The shards are laid out before the first tensor is computed and two
threads write and hash each tensor while the next is computed (`packager.formats.shards`), so memory
holds about two units' release tensors and one unit's source, whatever the model's size. Written
atomically (see `release_dir`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from packager import TRANSFORMERS_RANGE, __version__
from packager.errors import UsageError
from packager.formats.atomic import atomic_folder
from packager.formats.checkpoint import Checkpoint
from packager.formats.record import payload_digests, write_record
from packager.formats.secret import Secret
from packager.formats.shards import Entry, ShardStream, safetensors_dtype
from packager.maths.architectures import Unit
from packager.maths.series.activations import get_activation
from packager.maths.transform import (
    FITS,
    ChannelGroup,
    Hardening,
    LayerPlan,
    OutputBuffers,
    SourceMLP,
    allocation_orders,
    assemble,
    boost_channels,
    fit_layer,
    secret_id,
    unit_groups,
)
from packager.stages.calibrate import Stats

FORMAT_VERSION = 1
RUNTIME_DIR = Path(__file__).resolve().parents[1] / "runtime"
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
    `packager.stages.plan.slowdown`, and `order`/`coverage` hold the choice once it is made.
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


def channel_groups_of(checkpoint: Checkpoint, plans: list[LayerPlan], masks: list[torch.Tensor],
                      options: ConvertOptions, secret: bytes, layer: int,
                      boosts: list[torch.Tensor] | None = None) -> list[ChannelGroup]:
    """MLP unit `layer`'s channel groups in release order: the secret draws, small, no tensor of the hidden size."""
    return unit_groups(plans[layer], masks[layer], None if boosts is None else boosts[layer],
                       options.hardening_scheme, secret, layer, gated=checkpoint.adapter.gated)


def layer_tensors(checkpoint: Checkpoint, plans: list[LayerPlan], masks: list[torch.Tensor],
                  options: ConvertOptions, secret: bytes, layer: int,
                  boosts: list[torch.Tensor] | None = None, *, dtype: torch.dtype = torch.float64
                  ) -> dict[str, torch.Tensor]:
    """The release tensors of MLP unit `layer` (a layer's MLP or an expert), named as released.

    With order allocation (`boosts`), the unit's channels form groups released one after the other:
    base-order channels, boost-order channels, then plaintext channels (docs/FORMAT.md, "groups").
    """
    unit = mlp_units(checkpoint)[layer]
    source = SourceMLP(**checkpoint.adapter.read_mlp(checkpoint, unit))
    groups = channel_groups_of(checkpoint, plans, masks, options, secret, layer, boosts)
    return {unit.prefix + name: value for name, value in assemble(source, groups, dtype).items()}


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
    from packager.maths.series.fit import TRIM_CANDIDATES, UNIFORM_FLOOR

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
    units = mlp_units(checkpoint)
    groups = [channel_groups_of(checkpoint, plans, masks, options, secret.value, index, boosts)
              for index in range(len(units))]
    copied = _copied_entries(checkpoint, dtype)
    entries = [*(entry for _, entry in copied),
               *(entry for index, unit in enumerate(units) for entry in _unit_entries(
                   checkpoint, unit, masks[index].numel(), groups[index], dtype, spec["out_bias"]))]
    # The record lists the source's SHA-256s: hashed on a thread of its own while the release is written.
    threading.Thread(target=checkpoint.file_digests, name="unswift-source-digests", daemon=True).start()
    with atomic_folder(out, overwrite=overwrite) as staging, _intra_op_threads(1):
        stream = ShardStream(staging, entries, options.max_shard_bytes,
                             {"format": "pt", "unswift_format_version": str(FORMAT_VERSION)})
        try:
            for key, entry in copied:
                stream.put(entry.name, checkpoint.tensor(key).to(entry.dtype))
            # Two sets of output memory, alternately: `put` returns only once the writer is done with the
            # tensor put before, so by the time unit i + 2 is assembled unit i's tensors are on disk.
            buffers = (OutputBuffers(), OutputBuffers())
            for index, unit in enumerate(units):
                say(f"MLP {index + 1}/{len(units)} ({unit.name}): {int(masks[index].sum())} channels expanded")
                source = SourceMLP(**adapter.read_mlp(checkpoint, unit))
                for name, tensor in assemble(source, groups[index], dtype, buffers[index % 2]).items():
                    stream.put(unit.prefix + name, tensor)
                del source
            shard_digests = stream.finish()
        finally:
            stream.close()
        shard_names = list(shard_digests)
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
        record["payload"] = payload_digests(staging, known=shard_digests)
        write_record(staging, record)
    trials = (extra_record or {}).get("coverage_trials", [])
    return ConvertResult(out, spec, release_bytes, source_bytes, trials)


@contextlib.contextmanager
def _intra_op_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to `count` for the block.

    While the release is written, the writer thread (file writes, SHA-256) and the source's hashing need
    cores too; torch's idle OpenMP workers spin-wait and would take them (measured on the 4.4 GB synthetic
    checkpoint: 64 s -> 53 s together with moving the source hashing to this phase).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _copied_entries(checkpoint: Checkpoint, dtype: torch.dtype) -> list[tuple[str, Entry]]:
    """(source key, layout entry) of every tensor copied from the source (floating ones cast to `dtype`)."""
    from packager.maths.sizing import read_header

    prefixes = checkpoint.adapter.source_prefixes(checkpoint.config)
    headers = {file: read_header(file) for file in set(checkpoint.key_to_file.values())}
    entries = []
    for key in sorted(checkpoint.key_to_file):
        if not key.startswith(prefixes):
            spec = headers[checkpoint.key_to_file[key]][key]
            try:
                stored = safetensors_dtype(spec.dtype)
            except ValueError as err:
                raise UsageError(f"cannot copy tensor '{key}': {err}") from err
            entries.append((key, Entry(checkpoint.adapter.release_key(key),
                                       dtype if stored.is_floating_point else stored, spec.shape)))
    return entries


def _unit_entries(checkpoint: Checkpoint, unit: Unit, intermediate: int, groups: list[ChannelGroup],
                  dtype: torch.dtype, out_bias: bool) -> list[Entry]:
    """Layout entries of one unit's release tensors, in the order `assemble` returns them."""
    hidden = int(checkpoint.config.hidden_size)
    rows = intermediate * (2 if checkpoint.adapter.gated else 1)
    entries = [Entry(unit.prefix + "in_proj.weight", dtype, (rows, hidden)),
               Entry(unit.prefix + "in_proj.bias", dtype, (rows,)),
               Entry(unit.prefix + "theta", dtype, (hidden, sum(group.columns for group in groups)))]
    if out_bias:
        entries.append(Entry(unit.prefix + "out_bias", dtype, (hidden,)))
    return entries


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
    from packager.maths.sizing import ReleaseSizer, dominant_dtype, plan_json
    from packager.stages.bench import DEFAULT_CONTEXT

    options.validate()
    context = context or DEFAULT_CONTEXT
    dtype = options.dtype or dominant_dtype(ReleaseSizer(checkpoint, dtype="float32").source)
    sizer = ReleaseSizer(checkpoint, dtype=dtype)
    out: dict = {"dry_run": True, "source": checkpoint.name, "dtype": dtype, "fit": options.fit,
                 "mlp_channels": sizer.channels}
    if options.slowdown is not None:
        from packager.stages.plan.slowdown import candidate_orders

        choices = candidate_orders(sizer, options.slowdown, context=context, max_order=MAX_ORDER)
        candidates = [plan_json(sizer, order, sizer.uniform(coverage), context=context) for order, coverage in choices]
        out.update(candidates[0])
        out["slowdown"] = {"requested": options.slowdown, "basis": "bytes model only; convert refines it by "
                           "timing on the publishing machine and picks the candidate of best measured fidelity"}
    elif options.coverage is None:
        from packager.stages.plan.coverage import CANDIDATES

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
    from packager.formats.files import sha256_text

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
