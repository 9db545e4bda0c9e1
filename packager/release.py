"""`release`: calibrate -> convert -> eval -> bench -> audit -> card -> sign -> push, resumable.

Every stage records what it produced in the release folder; a re-run with the same inputs skips the
stages whose results are already there (a folder converted from the same source with the same options
is reused, a recorded eval is kept, a valid signature by the same key is kept) and the push is
idempotent. Everything that can be checked cheaply is checked before the first expensive stage.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from packager.errors import CheckFailed, UsageError
from packager.formats.checkpoint import Checkpoint, open_checkpoint
from packager.formats.files import sha256_file, sha256_text
from packager.formats.record import read_record, update_record
from packager.stages.convert import ConvertOptions

Progress = Callable[[str], None] | None


@dataclass(frozen=True)
class PublishOptions:
    """Where and how the release is pushed (None repo = `--no-push`)."""

    repo: str | None
    tag: str | None = None
    private: bool = True
    gated: str | None = None
    endpoint: str | None = None
    revision: str | None = None
    create_pr: bool = False
    no_xet: bool = False


@dataclass
class ReleaseReport:
    release_dir: Path
    stages: dict[str, str] = field(default_factory=dict)
    fields: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"release_dir": str(self.release_dir), "stages": self.stages, **self.fields}


def release_inputs(checkpoint: Checkpoint, options: ConvertOptions, *, calibration: str | Path | None,
                   calibration_tokens: int, calibration_seed: int, stats: str | Path | None,
                   secret_id: str) -> str:
    """Digest of everything that determines the converted folder: a match means it can be reused."""
    calibration_digest = None
    if calibration is not None:
        path = Path(calibration)
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        calibration_digest = sha256_text(json.dumps([sha256_file(f) for f in files if f.is_file()]))
    return sha256_text(json.dumps({
        "source": checkpoint.file_digests(), "options": options.__dict__, "calibration": calibration_digest,
        "calibration_tokens": calibration_tokens, "calibration_seed": calibration_seed,
        "stats": sha256_file(Path(stats)) if stats else None, "secret": secret_id,
    }, sort_keys=True, default=str))


def release(
    checkpoint: str | Path, *, out: str | Path | None = None, options: ConvertOptions | None = None,
    publish: PublishOptions | None = None, key: str | Path | None = None, calibration: str | Path | None = None,
    calibration_tokens: int = 16384, calibration_seed: int = 0, stats: str | Path | None = None,
    secret_file: str | Path | None = None, min_top1: float | None = None, max_kl: float | None = None,
    overwrite: bool = False, eval_tokens: int = 8192, bench: bool = True, audit: bool = True,
    progress: Progress = None, show_progress: bool = False,
) -> ReleaseReport:
    """Take a checkpoint to a signed, pushed release (or a signed local folder with `publish.repo=None`).

    Raises:
        UsageError: bad input, found before any expensive stage (checkpoint, options, key, repo id,
            output folder whose recorded inputs differ and no `overwrite`).
        CheckFailed: `min_top1` / `max_kl` missed (before anything is pushed).
        HubError: a network or Hub failure; re-running resumes.
    """
    from packager import api
    from packager.formats.secret import resolve_secret
    from packager.maths.transform import secret_id
    from packager.publish import signing

    say = progress or (lambda _msg: None)
    options = options or ConvertOptions()
    options.validate()
    publish = publish or PublishOptions(repo=None)
    source = open_checkpoint(checkpoint)
    out = Path(out) if out else Path("releases") / source.name.split("/")[-1]
    signing_key = _load_key(key, pushing=publish.repo is not None)
    if publish.repo is not None:
        from packager.publish.hub import _check_repo_id  # validate before any work

        _check_repo_id(publish.repo)
    secret = resolve_secret(secret_file, out)  # created (0600, beside `out`) now, so a resume finds it
    if secret.origin == "new":
        say(f"new hardening secret written to {secret.path} (mode 0600); keep it, never publish it")
    inputs = release_inputs(source, options, calibration=calibration, calibration_tokens=calibration_tokens,
                            calibration_seed=calibration_seed, stats=stats, secret_id=secret_id(secret.value))
    report = ReleaseReport(out)
    reuse = _reusable(out, inputs)
    if out.exists() and not reuse and not overwrite:
        raise UsageError(f"output folder '{out}' exists and was made from other inputs; pass --overwrite "
                         "to replace it (a folder from the same inputs is resumed)")

    if reuse:
        report.stages["convert"] = "skipped (recorded inputs match)"
        say(f"resuming {out}: its recorded inputs match")
    else:
        say("calibrate + convert")
        api.convert(source, out, stats=stats, options=options, calibration=calibration,
                    calibration_tokens=calibration_tokens, calibration_seed=calibration_seed,
                    secret_file=secret.path if secret.origin != "env" else None, overwrite=True, progress=progress)
        update_record(out, inputs={**read_record(out)["inputs"], "release": inputs})
        report.stages["convert"] = "done"
        report.fields["secret_file"] = str(secret.path) if secret.path else None

    record = read_record(out)
    if record.get("eval") is None:
        say("eval")
        measured = api.evaluate(out, source, tokens=eval_tokens, progress=progress)
        api.record_measurement(out, "eval", measured.to_json())
        report.stages["eval"] = "done"
    else:
        report.stages["eval"] = "skipped (recorded)"
    evaluation = read_record(out)["eval"]
    report.fields["eval"] = evaluation
    _check_thresholds(evaluation, min_top1=min_top1, max_kl=max_kl)

    if bench and not read_record(out).get("bench"):
        from packager.stages.bench import bench as run_bench
        from packager.stages.bench import merge_entries

        say("bench")
        measured = run_bench(out, source, progress=progress)
        api.record_measurement(out, "bench", merge_entries(read_record(out).get("bench") or [],
                                                          measured.record_entries()))
        report.stages["bench"] = "done"
    else:
        report.stages["bench"] = "skipped (recorded)" if bench else "skipped (--no-bench)"

    if audit and read_record(out).get("audit") is None:
        say("audit")
        api.record_measurement(out, "audit", _run_audit(out, source, progress))
        report.stages["audit"] = "done"
    elif audit:
        report.stages["audit"] = "skipped (recorded)"
    else:
        report.stages["audit"] = "skipped (--no-audit)"

    if publish.repo is not None:
        update_record(out, hub={"repo": publish.repo, "tag": publish.tag or f"unswift-{inputs[:12]}"})
    if signing_key is not None:
        fingerprint = signing.key_fingerprint(signing_key.public_key())
        if _signed_by(out, signing_key):
            report.stages["sign"] = "skipped (valid signature by this key)"
        else:
            from packager.publish.seal import seal

            say("card + sign")
            seal(out, signing_key)
            report.stages["sign"] = "done"
        report.fields["key_fingerprint"] = fingerprint
    else:
        from packager.publish.card import write_readme

        write_readme(out)
        report.stages["sign"] = "skipped (no --key; the folder is unsigned)"

    if publish.repo is not None:
        from packager.publish import hub

        tag = read_record(out)["hub"]["tag"]
        pushed = hub.push(out, publish.repo, tag=tag, private=publish.private, public=not publish.private,
                          gated=publish.gated, endpoint=publish.endpoint, revision=publish.revision,
                          create_pr=publish.create_pr, no_xet=publish.no_xet, show_progress=show_progress,
                          progress=progress)
        report.fields.update(pushed.to_json())
        report.stages["push"] = "done" if pushed.new_commit else "already on the Hub"
    else:
        report.stages["push"] = "skipped (--no-push)"
    return report


def _load_key(key: str | Path | None, *, pushing: bool):
    import os

    from packager.publish import signing

    if key is None and not os.environ.get("UNSWIFT_SIGNING_KEY"):
        if pushing:
            raise UsageError("a pushed release must be signed: pass --key KEY or set UNSWIFT_SIGNING_KEY",
                             hint="create a key with `unswift keygen --out publisher.pem`")
        return None
    return signing.load_signing_key(key)


def _reusable(out: Path, inputs: str) -> bool:
    if not (out / "unswift.json").is_file():
        return False
    try:
        return read_record(out).get("inputs", {}).get("release") == inputs
    except UsageError:
        return False


def _signed_by(out: Path, key) -> bool:
    from packager.publish import signing

    if not (out / "model.sig").is_file():
        return False
    try:
        return signing.verify(out, key.public_key()).verified
    except (UsageError, CheckFailed):
        return False


def _check_thresholds(evaluation: dict, *, min_top1: float | None, max_kl: float | None) -> None:
    misses = []
    if min_top1 is not None and evaluation["top1_agreement"] < min_top1:
        misses.append(f"top-1 agreement {evaluation['top1_agreement']:.4f} < --min-top1 {min_top1}")
    if max_kl is not None and evaluation["kl_mean"] > max_kl:
        misses.append(f"KL {evaluation['kl_mean']:.5f} > --max-kl {max_kl}")
    if misses:
        raise CheckFailed("not pushed: " + "; ".join(misses), details={"eval": evaluation})


def _run_audit(out: Path, source: Checkpoint, progress: Progress) -> dict:
    """The protection audit's record entry: every known attack against this release."""
    from packager.stages.audit import audit as run_audit

    return run_audit(out, reference=source, progress=progress).to_json()
