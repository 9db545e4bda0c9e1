"""The release record `unswift.json`: read, update, and the payload digests it lists."""

from __future__ import annotations

import json
from pathlib import Path

from packager.errors import UsageError
from packager.formats.atomic import write_text_atomic
from packager.formats.files import sha256_file

RECORD = "unswift.json"
#: Files of a release that the payload list leaves out (the card, the record itself, the signature).
NOT_PAYLOAD = ("README.md", RECORD, "model.sig")


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


def payload_digests(release_dir: Path, known: dict[str, str] | None = None) -> dict[str, str]:
    """SHA-256 of every payload file (POSIX relative paths), i.e. all files but card, record, signature.

    `known` holds digests already taken of files as they were written (the shards), which are not read again.
    """
    root = Path(release_dir)
    known = known or {}
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    return {path: known[path] if path in known else sha256_file(root / path)
            for path in (p.relative_to(root).as_posix() for p in files) if path not in NOT_PAYLOAD}
