"""Atomic output folders: build in a hidden sibling, then rename into place.

A failed run leaves nothing half-written; an existing folder is replaced only when asked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from packager.errors import UsageError


def check_output(out: Path, *, overwrite: bool, flag: str = "--overwrite", folder: bool = True) -> None:
    """Refuse an existing output before any expensive work starts (a folder, or a file with `folder=False`)."""
    kind = "folder" if folder else "file"
    if out.exists() and not overwrite:
        raise UsageError(f"output {kind} '{out}' exists; pass {flag} to replace it")
    if out.exists() and out.is_dir() != folder:
        raise UsageError(f"output '{out}' exists and is not a {kind}")


@contextlib.contextmanager
def atomic_folder(out: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a staging folder that becomes `out` only if the block finishes without an exception."""
    check_output(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / "old")
            os.replace(staging, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_text_atomic(path: Path, text: str, *, mode: int | None = None) -> None:
    """Write `text` to `path` via a temporary file created with `mode` from the start (no readable window)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644 if mode is None else mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
