"""The publisher's ledger: which recipient got which fingerprinted release (JSON Lines, append-only).

One JSON object per line (docs/FORMAT.md, "The ledger"). Entries are only ever appended, atomically:
under an exclusive lock the whole file is rewritten to a temporary sibling with the new line and renamed
over the old one, so a crash leaves either the old ledger or the new one, never half a line. The ledger
never holds the secret (only `publisher_secret_id`, an HMAC of a constant under it); it lives outside
every release, like the secret, and next to it the profiles its entries name (`<ledger>.profiles/`).
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import torch

from packager.errors import UsageError

LEDGER_VERSION = 1
#: The fields an entry may hold; anything else (a secret above all) is refused before it is written.
FIELDS = ("ledger_version", "event", "date", "recipient", "repo", "revision", "tag", "release_digest",
          "secret_id", "publisher_secret_id", "source", "source_digest", "scheme", "profile", "profile_digest",
          "pattern_digest", "torch", "fidelity")
REQUIRED = ("recipient", "release_digest", "secret_id", "publisher_secret_id", "source_digest", "profile",
            "profile_digest", "pattern_digest")
DEFAULT_NAME = "unswift-ledger.jsonl"


def default_ledger() -> Path:
    return Path(DEFAULT_NAME)


def default_secret_path(ledger: Path) -> Path:
    """The publisher secret's default file: beside the ledger (`<ledger stem>.secret`)."""
    return ledger.with_name(ledger.stem + ".secret")


def profiles_dir(ledger: Path) -> Path:
    return ledger.with_name(ledger.name + ".profiles")


def append_entry(ledger: Path, entry: dict) -> None:
    """Append one entry (a new line) atomically.

    Raises:
        ValueError: the entry has a field the ledger does not hold, or lacks a required one (a bug).
    """
    unknown = sorted(set(entry) - set(FIELDS))
    missing = [name for name in REQUIRED if entry.get(name) is None] if entry.get("event") != "pushed" else []
    if unknown or missing:
        raise ValueError(f"ledger entry: unknown fields {unknown}, missing {missing}")
    line = json.dumps({"ledger_version": LEDGER_VERSION, **entry}, sort_keys=True, separators=(",", ":"))
    ledger.parent.mkdir(parents=True, exist_ok=True)
    lock = ledger.with_name(f".{ledger.name}.lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            old = ledger.read_bytes() if ledger.is_file() else b""
            if old and not old.endswith(b"\n"):
                old += b"\n"
            tmp = ledger.with_name(f".{ledger.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(old + line.encode() + b"\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, ledger)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_ledger(ledger: Path) -> list[dict]:
    """Every entry, in order.

    Raises:
        UsageError: the file is missing, or a line is not a JSON object of a known ledger version.
    """
    if not ledger.is_file():
        raise UsageError(f"ledger '{ledger}' not found", hint="pass the --ledger FILE that convert/release wrote")
    entries = []
    for number, text in enumerate(ledger.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"ledger '{ledger}' line {number} is not JSON: {err.msg}") from err
        if not isinstance(entry, dict) or entry.get("ledger_version") != LEDGER_VERSION:
            raise UsageError(f"ledger '{ledger}' line {number} is not a version-{LEDGER_VERSION} ledger entry")
        entries.append(entry)
    return entries


def issued(entries: list[dict], *, source_digest: str | None = None,
           publisher_secret_id: str | None = None) -> list[dict]:
    """The issuing entries (not the "pushed" updates), optionally of one source and one publisher secret."""
    return [e for e in entries if e.get("event", "issued") == "issued"
            and (source_digest is None or e.get("source_digest") == source_digest)
            and (publisher_secret_id is None or e.get("publisher_secret_id") == publisher_secret_id)]


# -- the profile files next to the ledger -----------------------------------------------------------------


def save_profile(ledger: Path, tensors: dict[str, torch.Tensor], digest: str, metadata: dict[str, str]) -> str:
    """Write a profile (named tensors) beside the ledger once; returns its file name (relative to the
    profiles folder). Not secret, but it says where the patterns live: keep it with the ledger."""
    from safetensors.torch import save_file

    folder = profiles_dir(ledger)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{digest}.safetensors"
    if not (folder / name).is_file():
        tmp = folder / f".{name}.tmp"
        save_file(tensors, str(tmp), metadata={"unswift_fingerprint_profile": "1", **metadata})
        os.replace(tmp, folder / name)
    return name


def load_profile(ledger: Path, name: str) -> dict[str, torch.Tensor]:
    """The named tensors of a profile the ledger names.

    Raises:
        UsageError: the profile file is missing or unreadable.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = profiles_dir(ledger) / Path(name).name
    if not path.is_file():
        raise UsageError(f"fingerprint profile '{path}' not found",
                         hint="keep the ledger's .profiles folder next to the ledger")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise UsageError(f"fingerprint profile '{path}' is unreadable: {err}") from err

