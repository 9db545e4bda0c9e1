"""Write a release folder: statistics + source weights -> release tensors, config, loader, record.

Streams the source: non-MLP tensors are copied one at a time and each MLP unit is transformed on its
own, straight into the release dtype. The shards are laid out before the first tensor is computed and two
threads write and hash each tensor while the next is computed (`packager.formats.shards`), so memory
holds about two units' release tensors and one unit's source, whatever the model's size. Written
atomically (see `packager.formats.atomic`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from packager import TRANSFORMERS_RANGE, __version__
from packager.dtypes import RUNTIME, from_code, runtime_name
from packager.errors import UsageError
from packager.formats.atomic import atomic_folder, check_output
from packager.formats.checkpoint import Checkpoint
from packager.formats.names import CONFIG, FORMAT_VERSION, GENERATION_CONFIG, RUNTIME_FILES
from packager.formats.record import payload_digests, write_record
from packager.formats.secret import Secret, resolve_secret
from packager.formats.shards import Entry, ShardStream
from packager.formats.stats import Stats
from packager.maths.architectures import Unit
from packager.maths.transform import (
    ChannelGroup,
    LayerPlan,
    OutputBuffers,
    SourceMLP,
    assemble,
    boost_channels,
)
from packager.progress import Progress, reporter
from packager.stages import plan as planning
from packager.stages.budget import Budget
from packager.stages.calibrate import DEFAULT_SEQ_LEN, DEFAULT_TOKENS, check_calibration_options
from packager.stages.calibrate import calibrate as run_calibration
from packager.stages.options import ConvertOptions
from packager.stages.tensors import channel_groups_of, mlp_units, release_spec

#: The loader files copied into every release are package data of `packager.runtime`.
RUNTIME_PACKAGE = "packager.runtime"


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


def write_release(checkpoint: Checkpoint, out: Path, *, stats: Stats, options: ConvertOptions,
                  plans: list[LayerPlan], masks: list[torch.Tensor], secret: Secret, overwrite: bool,
                  progress: Progress = None, extra_record: dict | None = None,
                  ) -> ConvertResult:
    """Write the release folder atomically and return what was written."""
    say = reporter(progress)
    dtype_name = options.dtype or runtime_name(_source_dtype(checkpoint))
    dtype = RUNTIME[dtype_name]
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
        (staging / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=False) + "\n")
        for name in RUNTIME_FILES:
            (staging / name).write_bytes(resources.files(RUNTIME_PACKAGE).joinpath(name).read_bytes())
        for file in [*checkpoint.tokenizer_files, *checkpoint.license_files]:
            shutil.copyfile(file, staging / file.name)
        if (checkpoint.path / GENERATION_CONFIG).is_file():
            shutil.copyfile(checkpoint.path / GENERATION_CONFIG, staging / GENERATION_CONFIG)
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
    from packager.formats.safetensors import read_header

    prefixes = checkpoint.adapter.source_prefixes(checkpoint.config)
    headers = {file: read_header(file) for file in set(checkpoint.key_to_file.values())}
    entries = []
    for key in sorted(checkpoint.key_to_file):
        if not key.startswith(prefixes):
            spec = headers[checkpoint.key_to_file[key]][key]
            try:
                stored = from_code(spec.dtype)
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


def release_config(checkpoint: Checkpoint, spec: dict) -> dict:
    config = json.loads((checkpoint.path / CONFIG).read_text())
    adapter = checkpoint.adapter
    config["model_type"] = f"unswift_{adapter.base_model_type}"
    config["architectures"] = [adapter.runtime_classes()["AutoModelForCausalLM"].split(".")[-1]]
    config["auto_map"] = adapter.runtime_classes()
    config["dtype"] = spec["dtype"]
    config.pop("torch_dtype", None)
    config["unswift"] = spec
    return config


def _source_dtype(checkpoint: Checkpoint) -> torch.dtype:
    """The dtype of the source's MLP weights (of its first unit, read through the adapter)."""
    return checkpoint.adapter.read_mlp(checkpoint, mlp_units(checkpoint)[0], parts=("down",))["down"].dtype


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
            "dtype": runtime_name(_source_dtype(checkpoint)), "num_parameters": checkpoint.num_parameters(),
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
        "fingerprint": extra.get("fingerprint"),
        "eval": None,
        "bench": [],
        "audit": None,
        "signing": {"key_fingerprint": None},
        "payload": {},
    }


def _license_from_config(checkpoint: Checkpoint) -> str | None:
    return getattr(checkpoint.config, "license", None)


def convert(
    source: Checkpoint, out: str | Path, *, stats: Stats | str | Path | None = None,
    options: ConvertOptions | None = None, calibration: str | Path | None = None,
    calibration_tokens: int | None = None, calibration_seed: int = 0, secret_file: str | Path | None = None,
    overwrite: bool = False, progress: Progress = None, recipient: str | None = None,
    ledger: str | Path | None = None, eval_tokens: int | None = None, budget: Budget | None = None,
) -> tuple[ConvertResult, Secret]:
    """Write an (unsigned) release folder: calibrate (unless `stats`), plan, convert.

    Options are validated and the output folder checked before calibration starts. Measured choices
    (`--coverage auto`, `--slowdown`) are made by `packager.stages.plan.resolve`. `budget` (`release
    --budget`) sizes what they measure and caps the sequences of text sampled from the model.

    With `recipient`, the release is that recipient's fingerprinted copy (`packager.stages.fingerprint`):
    `secret_file` is then the publisher's secret (default: beside the ledger), the hardening secret is
    derived from it for this recipient, the calibration is the unfingerprinted source's, and an entry
    is appended to `ledger` once the folder is written.

    Returns:
        The result and the secret that seeded hardening (its `path` is where it was stored; a
        recipient's derived secret has none).

    Raises:
        UsageError: bad options, checkpoint, statistics or output folder.
    """
    options = options or ConvertOptions()
    options.validate()
    sample_length = budget.sample_length if budget is not None else None
    check_calibration_options(tokens=calibration_tokens, seed=calibration_seed)
    out = Path(out)
    check_output(out, overwrite=overwrite)
    if options.slowdown is not None:
        from packager.stages.plan.slowdown import check_supported

        check_supported(source)  # before the model is loaded and calibrated
    if isinstance(stats, (str, Path)):
        stats = Stats.load(Path(stats))
    tokens = DEFAULT_TOKENS if calibration_tokens is None else calibration_tokens
    made = fingerprint = None  # a recipient's fingerprinted source, and its record section
    if recipient is not None:
        made, fingerprint, stats, model = _fingerprint(source, recipient=recipient, ledger=ledger,
                                                       secret_file=secret_file, stats=stats, calibration=calibration,
                                                       tokens=tokens, seed=calibration_seed, eval_tokens=eval_tokens,
                                                       sample_length=sample_length, progress=progress)
        source, secret = made.checkpoint, made.hardening
    else:
        secret = resolve_secret(secret_file, out)
        model = None
    measuring = options.coverage is None or options.slowdown is not None
    if model is None and (measuring or (stats is None and calibration is None)):
        # Measured choices need the model in memory; so does text sampled from it. Calibration from a
        # text file alone reads the checkpoint one decoder layer at a time.
        model = source.load_model(torch.float32)
    if stats is None:
        stats = run_calibration(source, text=calibration, tokens=tokens, seed=calibration_seed, progress=progress,
                                model=model, seq_len=_calibration_length(calibration, sample_length))
    chosen = planning.resolve(source, model, stats, options, secret.value, progress=progress, budget=budget)
    extra = {"coverage_trials": chosen.coverage_trials, "slowdown": chosen.slowdown}
    if fingerprint is not None:
        extra["fingerprint"] = fingerprint
    result = write_release(source, out, stats=stats, options=chosen.options, plans=chosen.plans,
                           masks=chosen.masks, secret=secret, overwrite=overwrite, progress=progress,
                           extra_record=extra)
    if made is not None:
        from packager.stages.fingerprint import record_issue

        record_issue(made, out, fingerprint)
    return result, secret


def _calibration_length(calibration: str | Path | None, sample_length: int | None) -> int:
    """Calibration's sequence length: the budget's cap applies to text sampled from the model, not to a file."""
    return DEFAULT_SEQ_LEN if calibration is not None or sample_length is None else sample_length


def _fingerprint(source: Checkpoint, *, recipient: str, ledger, secret_file, stats, calibration, tokens: int,
                 seed: int, eval_tokens: int | None, sample_length: int | None, progress: Progress):
    """The fingerprinted source, its record section, the source's statistics, and the loaded model with the
    pattern added.

    The unfingerprinted source model is loaded once: it gives the profile's statistics (when the ledger
    has no profile of this source yet), the calibration (shared by every recipient) and the fidelity
    reference; the pattern is then added to it in place for planning.
    """
    from packager.formats.ledger import default_ledger
    from packager.stages import fingerprint as fp
    from packager.stages.evaluate import DEFAULT_EVAL_TOKENS

    fp.check_source(source, None)
    model = source.load_model(torch.float32)
    made, summary = fp.prepare(source, recipient=recipient, ledger=Path(ledger) if ledger else default_ledger(),
                               secret_file=secret_file, text_ids=lambda: fp.calibration_ids(
                                   source, model, calibration, tokens, seed, seq_len=sample_length), seed=seed,
                               progress=progress, model=model)
    if stats is None:
        stats = run_calibration(source, text=calibration, tokens=tokens, seed=seed, progress=progress, model=model,
                                seq_len=_calibration_length(calibration, sample_length))
    reporter(progress)("fingerprint: fidelity of the fingerprinted source against the source")
    ids = fp.eval_ids(source, model, DEFAULT_EVAL_TOKENS if eval_tokens is None else eval_tokens,
                      seq_len=sample_length)
    fidelity = fp.source_fidelity(model, made.checkpoint.key, made.checkpoint.profile, ids)
    fp.add_pattern(model, made.checkpoint.key, made.checkpoint.profile, made.checkpoint.dims)
    return made, made.record(fidelity, summary), stats, model
