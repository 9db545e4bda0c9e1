"""The release secret that seeds hardening: from a file, the environment, or freshly made.

From `--secret-file` or `UNSWIFT_SECRET`; by default a new random secret is written to a mode-0600 file
next to (never inside) the output folder (docs/INTERFACE.md#secrets-and-keys). The secret never enters a
release, a log or JSON.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from packager.errors import UsageError
from packager.formats.atomic import write_text_atomic

ENV = "UNSWIFT_SECRET"


@dataclass(frozen=True)
class Secret:
    value: bytes
    origin: str  # "file", "env" or "new"
    path: Path | None

    def __repr__(self) -> str:  # never show the value
        return f"Secret(origin={self.origin!r}, path={self.path!r})"


def default_secret_path(out: Path) -> Path:
    return out.parent / f"{out.name}.secret"


def read_secret(secret_file: str | Path | None, *, if_missing: str = "") -> Secret | None:
    """The secret the user gave: `secret_file`, else `UNSWIFT_SECRET`; None when neither is set.

    `if_missing` is appended to the not-found message (what the caller's command can do instead).

    Raises:
        UsageError: `secret_file` was given but does not exist, or is empty.
    """
    if secret_file is not None:
        path = Path(secret_file)
        if not path.is_file():
            raise UsageError(f"secret file '{path}' not found{if_missing}")
        text = path.read_text().strip()
        if not text:
            raise UsageError(f"secret file '{path}' is empty")
        return Secret(text.encode(), "file", path)
    if os.environ.get(ENV):
        return Secret(os.environ[ENV].strip().encode(), "env", None)
    return None


def resolve_secret(secret_file: str | Path | None, out: Path, *, create: bool = True) -> Secret:
    """The secret for a release written to `out`: the one given (`read_secret`), else the one beside
    `out`, else a new one (written beside `out` with `create`).

    Raises:
        UsageError: `secret_file` was given but does not exist, or is empty.
    """
    given = read_secret(secret_file, if_missing="; omit --secret-file to create a new secret")
    if given is not None:
        return given
    path = default_secret_path(out)
    if path.is_file() and path.read_text().strip():
        return Secret(path.read_text().strip().encode(), "file", path)
    text = secrets.token_hex(32)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text + "\n", mode=0o600)
    return Secret(text.encode(), "new", path if create else None)
