"""The release record `unswift.json`: read, update, and the payload digests it lists."""

from __future__ import annotations

import json
from pathlib import Path

from packager.errors import UsageError
from packager.formats.atomic import write_text_atomic
from packager.formats.files import list_files, sha256_file
from packager.formats.names import NOT_PAYLOAD, RECORD, SIGNATURE, UNSIGNED


def read_record(release_dir: Path) -> dict:
    path = Path(release_dir) / RECORD
    if not path.is_file():
        raise UsageError(f"'{release_dir}' is not an unswift release: it has no {RECORD}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"'{path}' is not valid JSON: {err.msg}") from err


def write_record(release_dir: Path, record: dict) -> None:
    write_text_atomic(Path(release_dir) / RECORD, json.dumps(record, indent=2) + "\n")


def update_record(release_dir: Path, **fields) -> dict:
    """Set top-level fields of the record and write it back atomically."""
    record = read_record(release_dir)
    record.update(fields)
    write_record(release_dir, record)
    return record


def record_measurement(release_dir: Path, field: str, value) -> bool:
    """Store a measurement in the record; a signature over the old record is removed, never left stale.

    Returns:
        True if `model.sig` was removed (the release must be signed again).
    """
    update_record(release_dir, **{field: value})
    signature = Path(release_dir) / SIGNATURE
    if signature.exists():
        signature.unlink()
        return True
    return False


def payload_digests(release_dir: Path, known: dict[str, str] | None = None) -> dict[str, str]:
    """SHA-256 of every payload file (POSIX relative paths): what the signature covers, less card and record.

    `known` holds digests already taken of files as they were written (the shards), which are not read again.
    """
    root = Path(release_dir)
    known = known or {}
    return {path: known[path] if path in known else sha256_file(root / path)
            for path in list_files(root, ignore=UNSIGNED) if path not in NOT_PAYLOAD}
