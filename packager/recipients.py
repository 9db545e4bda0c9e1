"""`release --recipients`: one fingerprinted release and one push per recipient, from one calibration.

Kept beside `release` (which makes one release) rather than inside it: it reads the recipients file,
calibrates once, and runs the whole pipeline per recipient with that recipient's fingerprint.
"""

from __future__ import annotations

from pathlib import Path

from packager.errors import UsageError
from packager.formats.checkpoint import Checkpoint, open_checkpoint
from packager.progress import Progress, reporter
from packager.release import PublishOptions, ReleaseReport, release
from packager.stages.budget import budget_named


def read_recipients(path: str | Path) -> list[tuple[str, str | None]]:
    """`NAME REPO` per line (REPO optional with --no-push; `#` starts a comment).

    Raises:
        UsageError: missing file, a malformed line, a repeated name, or no recipient at all.
    """
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"recipients file '{file}' not found")
    found: list[tuple[str, str | None]] = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) > 2:
            raise UsageError(f"recipients file '{file}' line {number}: expected `NAME REPO`, got {line.strip()!r}")
        if any(name == fields[0] for name, _ in found):
            raise UsageError(f"recipients file '{file}' line {number}: recipient {fields[0]!r} is listed twice")
        found.append((fields[0], fields[1] if len(fields) == 2 else None))
    if not found:
        raise UsageError(f"recipients file '{file}' lists no recipient")
    return found


def release_recipients(checkpoint: str | Path | Checkpoint, recipients: str | Path, *, out: str | Path | None = None,
                       publish: PublishOptions | None = None, ledger: str | Path | None = None,
                       stats: str | Path | None = None, calibration: str | Path | None = None,
                       calibration_tokens: int | None = None, calibration_seed: int = 0, progress: Progress = None,
                       **options) -> list[ReleaseReport]:
    """One fingerprinted release per line of `recipients`, each in `out/NAME`, pushed to its own repo.

    The calibration is made once (`out/calibration-stats.safetensors`, unless `stats`) and every recipient's
    release is converted from it; each gets its own pattern and hardening secret from the one publisher
    secret, and its own ledger entries. Every recipient is checked before the first conversion.

    Raises:
        UsageError: bad recipients file (or a missing repo when pushing), and everything `release` raises.
    """
    from packager.formats.ledger import default_ledger
    from packager.stages.calibrate import calibrate

    listed = read_recipients(recipients)
    publish = publish or PublishOptions(repo=None, push=False)
    pushing = publish.push and publish.repo is not None
    if calibration_tokens is None:
        calibration_tokens = budget_named(options.get("budget", "full")).calibration_tokens
    if pushing:
        from packager.publish.hub import check_repo_id

        for name, repo in listed:
            if repo is None:
                raise UsageError(f"recipient {name!r} has no repo: write `NAME ORG/REPO`, or pass --no-push")
            check_repo_id(repo)
    source = checkpoint if isinstance(checkpoint, Checkpoint) else open_checkpoint(checkpoint)
    root = Path(out) if out else Path("releases") / source.name.split("/")[-1]
    ledger = Path(ledger) if ledger else default_ledger()
    if stats is None:
        stats = root / "calibration-stats.safetensors"
        if not stats.is_file():
            reporter(progress)("calibration (shared by every recipient)")
            root.mkdir(parents=True, exist_ok=True)
            calibrate(source, text=calibration, tokens=calibration_tokens, seed=calibration_seed,
                      progress=progress).save(stats)
    reports = []
    for name, repo in listed:
        reporter(progress)(f"recipient {name}")
        target = PublishOptions(**{**publish.__dict__, "repo": repo})  # with --no-push it still names the card
        reports.append(release(source, out=root / name, publish=target, stats=stats, calibration=calibration,
                               calibration_tokens=calibration_tokens, calibration_seed=calibration_seed,
                               recipient=name, ledger=ledger, progress=progress, **options))
    return reports
