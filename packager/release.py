"""`release`: calibrate -> convert -> eval -> bench -> audit -> card -> sign -> push, resumable.

A release is a table of stages (`STAGES`), run in order over one shared state (`_Run`). Every stage
records what it produced in the release folder, so a re-run with the same inputs skips what is already
there (a folder converted from the same source with the same options is reused, a recorded eval,
bench or audit is kept, a valid signature by the same key is kept) and the push is idempotent.
Everything that can be checked cheaply (options, key, repo id, output folder) is checked before the
first expensive stage.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from packager.devices import default_device
from packager.errors import CheckFailed, UsageError
from packager.formats.checkpoint import Checkpoint, open_checkpoint
from packager.formats.files import list_files, sha256_file, sha256_text
from packager.formats.names import RECORD, SIGNATURE
from packager.formats.record import read_record, record_measurement, update_record
from packager.progress import Progress, reporter
from packager.stages.budget import Budget, budget_named
from packager.stages.options import ConvertOptions


@dataclass(frozen=True)
class PublishOptions:
    """Where and how the release is pushed.

    `repo` (and `tag`) name the release in its card even when `push` is False (`--no-push`), so every
    snippet of the card shows the repo users will load; `repo=None` leaves placeholders in the card.
    """

    repo: str | None
    tag: str | None = None
    private: bool = True
    gated: str | None = None
    endpoint: str | None = None
    revision: str | None = None
    create_pr: bool = False
    no_xet: bool = False
    push: bool = True

    @property
    def pushing(self) -> bool:
        """Whether the release stage ends with a push (a repo is named and `--no-push` was not given)."""
        return self.repo is not None and self.push


@dataclass
class ReleaseReport:
    """What each stage did ("done", "skipped (...)") and the fields `unswift release --json` prints."""

    release_dir: Path
    stages: dict[str, str] = field(default_factory=dict)
    fields: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"release_dir": str(self.release_dir), "stages": self.stages, **self.fields}


@dataclass(frozen=True)
class CalibrationInputs:
    """Where the calibration comes from: a statistics file, or text (file or self-sampled) and its size."""

    text: str | Path | None = None
    tokens: int = 16384
    seed: int = 0
    stats: str | Path | None = None


@dataclass
class _Run:
    """What every stage of one release reads and writes."""

    source: Checkpoint
    out: Path
    options: ConvertOptions
    publish: PublishOptions
    calibration: CalibrationInputs
    signing_key: object | None
    secret: object
    inputs: str
    reuse: bool
    eval_tokens: int
    budget: Budget
    thresholds: dict
    measure: dict  # {"bench": bool, "audit": bool}
    fingerprint: dict | None  # {"recipient", "ledger", "secret_file"} for a recipient's copy
    show_progress: bool
    progress: Progress
    report: ReleaseReport

    @property
    def say(self) -> Callable[[str], None]:
        return reporter(self.progress)


def release(
    checkpoint: str | Path | Checkpoint, *, out: str | Path | None = None, options: ConvertOptions | None = None,
    publish: PublishOptions | None = None, key: str | Path | None = None, calibration: str | Path | None = None,
    calibration_tokens: int | None = None, calibration_seed: int = 0, stats: str | Path | None = None,
    secret_file: str | Path | None = None, min_top1: float | None = None, max_kl: float | None = None,
    overwrite: bool = False, eval_tokens: int | None = None, bench: bool = True, audit: bool = True,
    budget: str = "full", progress: Progress = None, show_progress: bool = False, recipient: str | None = None,
    ledger: str | Path | None = None,
) -> ReleaseReport:
    """Take a checkpoint to a signed, pushed release (or a signed local folder: `publish.push=False`).

    `budget` ("full" or "quick", `packager.stages.budget`) sizes every measurement; `calibration_tokens`
    and `eval_tokens`, when given, win over it. The record and the card name the budget.

    With `recipient`, the release is that recipient's fingerprinted copy (see `packager.stages.fingerprint`):
    `secret_file` is the publisher's secret, the ledger gets an "issued" entry at conversion and a
    "pushed" entry (repo, revision, tag) after the push.

    Raises:
        UsageError: bad input, found before any expensive stage (options, checkpoint, key, repo id,
            output folder whose recorded inputs differ and no `overwrite`).
        CheckFailed: `min_top1` / `max_kl` missed (before anything is pushed).
        HubError: a network or Hub failure; re-running resumes.
    """
    sizes = budget_named(budget)
    calibration_tokens = sizes.calibration_tokens if calibration_tokens is None else calibration_tokens
    eval_tokens = sizes.eval_tokens if eval_tokens is None else eval_tokens
    check_release_options(options=options, calibration_tokens=calibration_tokens,
                          calibration_seed=calibration_seed, min_top1=min_top1, max_kl=max_kl,
                          eval_tokens=eval_tokens)
    run = _prepare(checkpoint, out=out, options=options, publish=publish, key=key,
                   calibration=CalibrationInputs(calibration, calibration_tokens, calibration_seed, stats),
                   secret_file=secret_file, overwrite=overwrite, eval_tokens=eval_tokens, budget=sizes,
                   thresholds={"min_top1": min_top1, "max_kl": max_kl}, measure={"bench": bench, "audit": audit},
                   progress=progress, show_progress=show_progress, recipient=recipient, ledger=ledger)
    seconds = run.report.fields.setdefault("stage_seconds", {})
    for name, stage in STAGES:
        started = time.perf_counter()
        run.report.stages[name] = stage(run)
        seconds[name] = round(time.perf_counter() - started, 1)
    return run.report


def check_release_options(*, options: ConvertOptions | None = None, calibration_tokens: int | None = None,
                          calibration_seed: int | None = None, min_top1: float | None = None,
                          max_kl: float | None = None, eval_tokens: int | None = None, **_: object) -> None:
    """Raise UsageError for an option out of range, before a checkpoint is opened (other arguments ignored)."""
    from packager.stages.calibrate import check_calibration_options
    from packager.stages.evaluate import check_eval_options

    if options is not None:
        options.validate()
    check_calibration_options(tokens=calibration_tokens, seed=calibration_seed)
    check_eval_options(tokens=eval_tokens, min_top1=min_top1, max_kl=max_kl)


def _prepare(checkpoint, *, out, options, publish, key, calibration: CalibrationInputs, secret_file, overwrite,
             eval_tokens, budget: Budget, thresholds, measure, progress, show_progress, recipient=None,
             ledger=None) -> _Run:
    """Every cheap check, before the first expensive stage; the secret is created now so a re-run finds it."""
    from packager.formats.secret import resolve_secret
    from packager.maths.transform import secret_id

    options = options or ConvertOptions()
    options.validate()
    publish = publish or PublishOptions(repo=None)
    source = checkpoint if isinstance(checkpoint, Checkpoint) else open_checkpoint(checkpoint)
    out = Path(out) if out else Path("releases") / source.name.split("/")[-1]
    signing_key = _load_key(key, pushing=publish.pushing)
    if publish.repo is not None:
        from packager.publish.hub import check_repo_id

        check_repo_id(publish.repo)
    fingerprint = None
    if recipient is not None:
        from packager.formats.ledger import default_ledger
        from packager.maths.fingerprint.keys import hardening_secret
        from packager.stages import fingerprint as fp

        fp.check_source(source, options.dtype)
        recipient = fp.check_recipient(recipient)
        ledger = Path(ledger) if ledger else default_ledger()
        publisher = fp.publisher_secret(secret_file, ledger, create=True)
        if publisher.origin == "new":
            reporter(progress)(f"new publisher secret written to {publisher.path} (mode 0600); keep it with the "
                               "ledger, never publish it")
        fingerprint = {"recipient": recipient, "ledger": ledger,
                       "secret_file": publisher.path if publisher.origin != "env" else None}
        secret = publisher
        hardening_id = secret_id(hardening_secret(publisher.value, recipient))
    else:
        secret = resolve_secret(secret_file, out)
        if secret.origin == "new":
            reporter(progress)(f"new hardening secret written to {secret.path} (mode 0600); keep it, never publish it")
        hardening_id = secret_id(secret.value)
    inputs = release_inputs(source, options, calibration, secret_id=hardening_id, budget=budget.name)
    reuse = _reusable(out, inputs)
    if out.exists() and not reuse and not overwrite:
        raise UsageError(f"output folder '{out}' exists and was made from other inputs; pass --overwrite "
                         "to replace it (a folder from the same inputs is resumed)")
    return _Run(source, out, options, publish, calibration, signing_key, secret, inputs, reuse, eval_tokens,
                budget, thresholds, measure, fingerprint, show_progress, progress, ReleaseReport(out))


def release_inputs(checkpoint: Checkpoint, options: ConvertOptions, calibration: CalibrationInputs, *,
                   secret_id: str, budget: str = "full") -> str:
    """Digest of everything that determines the converted folder and its measurements: a match means it
    can be reused (the budget counts: a quick folder's figures must not pass for full-size ones)."""
    calibration_digest = None
    if calibration.text is not None:
        path = Path(calibration.text)
        files = [path / name for name in list_files(path, follow_symlinks=True)] if path.is_dir() else [path]
        calibration_digest = sha256_text(json.dumps([sha256_file(f) for f in files]))
    return sha256_text(json.dumps({
        "source": checkpoint.file_digests(), "options": options.__dict__, "calibration": calibration_digest,
        "calibration_tokens": calibration.tokens, "calibration_seed": calibration.seed,
        "stats": sha256_file(Path(calibration.stats)) if calibration.stats else None, "secret": secret_id,
        **({"budget": budget} if budget != "full" else {}),
    }, sort_keys=True, default=str))


# -- the stages, in order ---------------------------------------------------------------------------------


def _convert(run: _Run) -> str:
    from packager.stages.convert import convert

    if run.reuse:
        run.say(f"resuming {run.out}: its recorded inputs match")
        return "skipped (recorded inputs match)"
    run.say("calibrate + convert")
    calibration = run.calibration
    fingerprint = run.fingerprint or {}
    convert(run.source, run.out, stats=calibration.stats, options=run.options, calibration=calibration.text,
            calibration_tokens=calibration.tokens, calibration_seed=calibration.seed,
            secret_file=run.secret.path if run.secret.origin != "env" else None, overwrite=True,
            progress=run.progress, recipient=fingerprint.get("recipient"), ledger=fingerprint.get("ledger"),
            eval_tokens=run.eval_tokens, budget=run.budget)
    update_record(run.out, inputs={**read_record(run.out)["inputs"], "release": run.inputs},
                  budget=run.budget.to_json())
    run.report.fields["secret_file"] = str(run.secret.path) if run.secret.path else None
    return "done"


def _eval(run: _Run) -> str:
    from packager.stages.evaluate import DEFAULT_SEQ_LEN, evaluate, threshold_misses

    state = "skipped (recorded)"
    if read_record(run.out).get("eval") is None:
        run.say("eval")
        measured = evaluate(run.out, run.source, tokens=run.eval_tokens, device=default_device(),
                            greedy_tokens=run.budget.greedy_tokens, progress=run.progress,
                            seq_len=run.budget.sample_length or DEFAULT_SEQ_LEN)
        record_measurement(run.out, "eval", measured.to_json())
        state = "done"
    evaluation = read_record(run.out)["eval"]
    run.report.fields["eval"] = evaluation
    misses = threshold_misses(evaluation, **run.thresholds)
    if misses:
        raise CheckFailed("not pushed: " + "; ".join(misses), details={"eval": evaluation})
    return state


def _bench(run: _Run) -> str:
    from packager.stages.bench import bench, record_bench

    if not run.measure["bench"]:
        return "skipped (--no-bench)"
    if read_record(run.out).get("bench"):
        return "skipped (recorded)"
    run.say("bench")
    record_bench(run.out, bench(run.out, run.source, steps=run.budget.bench_steps, progress=run.progress))
    return "done"


def _audit(run: _Run) -> str:
    from packager.stages.audit import audit
    from packager.stages.audit.report import LearningBudget

    if not run.measure["audit"]:
        return "skipped (--no-audit)"
    if read_record(run.out).get("audit") is not None:
        return "skipped (recorded)"
    run.say("audit")
    learning = LearningBudget(steps=run.budget.learning_steps, tokens=run.budget.attacker_tokens,
                              sample_length=run.budget.sample_length)
    record_measurement(run.out, "audit", audit(run.out, reference=run.source, learning=learning,
                                               timing_steps=run.budget.bench_steps, progress=run.progress).to_json())
    return "done"


def _sign(run: _Run) -> str:
    from packager.publish import signing
    from packager.publish.seal import seal

    hub = _hub_section(run)
    if hub != read_record(run.out).get("hub"):
        update_record(run.out, hub=hub)
    if run.signing_key is None:
        from packager.publish.card import write_readme

        write_readme(run.out)
        return "skipped (no --key; the folder is unsigned)"
    run.report.fields["key_fingerprint"] = signing.key_fingerprint(run.signing_key.public_key())
    if _signed_by(run.out, run.signing_key):
        return "skipped (valid signature by this key)"
    run.say("card + sign")
    seal(run.out, run.signing_key)
    return "done"


def _push(run: _Run) -> str:
    from packager.publish import hub

    publish = run.publish
    if not publish.pushing:
        return "skipped (--no-push)"
    pushed = hub.push(run.out, publish.repo, tag=read_record(run.out)["hub"]["tag"], private=publish.private,
                      public=not publish.private, gated=publish.gated, endpoint=publish.endpoint,
                      revision=publish.revision, create_pr=publish.create_pr, no_xet=publish.no_xet,
                      show_progress=run.show_progress, progress=run.progress)
    run.report.fields.update(pushed.to_json())
    if run.fingerprint is not None:
        from packager.stages.fingerprint import record_push

        record_push(run.fingerprint["ledger"], run.fingerprint["recipient"], run.out, repo=publish.repo,
                    revision=pushed.to_json().get("revision"), tag=pushed.to_json().get("tag"))
    return "done" if pushed.new_commit else "already on the Hub"


#: The pipeline, in order: (name in the report, stage). Each returns what it did, in words.
STAGES: tuple[tuple[str, Callable[[_Run], str]], ...] = (
    ("convert", _convert), ("eval", _eval), ("bench", _bench), ("audit", _audit), ("sign", _sign),
    ("push", _push),
)


# -- helpers ----------------------------------------------------------------------------------------------


def _hub_section(run: _Run) -> dict | None:
    """Where the release is published, for the card: the repo, and the tag (the default one when pushing).

    With `--no-push` and no `--tag` the tag is unknown (a later `unswift push` picks its own), so the card
    keeps a placeholder for it and says so.
    """
    publish = run.publish
    if publish.repo is None:
        return read_record(run.out).get("hub")
    tag = publish.tag or (f"unswift-{run.inputs[:12]}" if publish.pushing else None)
    return {"repo": publish.repo, "tag": tag}


def _load_key(key: str | Path | None, *, pushing: bool):
    from packager.publish import signing

    if key is None and not os.environ.get(signing.KEY_ENV):
        if pushing:
            raise UsageError("a pushed release must be signed: pass --key KEY or set UNSWIFT_SIGNING_KEY",
                             hint="create a key with `unswift keygen --out publisher.pem`")
        return None
    return signing.load_signing_key(key)


def _reusable(out: Path, inputs: str) -> bool:
    if not (out / RECORD).is_file():
        return False
    try:
        return read_record(out).get("inputs", {}).get("release") == inputs
    except UsageError:
        return False


def _signed_by(out: Path, key) -> bool:
    from packager.publish import signing

    if not (out / SIGNATURE).is_file():
        return False
    try:
        return signing.verify(out, key.public_key()).verified
    except (UsageError, CheckFailed):
        return False
