"""Files on disk: one walk over a folder and one streaming hash, shared by the record, signing and the push.

The walk lists files the way OpenSSF `model_signing` does (POSIX paths relative to the root, sorted as
paths, an ignored path hides everything below it), so what the record lists, what the signature covers
and what the push sends are computed the same way. The hash reads each file once, in 8 MiB chunks, and
can give the git blob id beside the SHA-256 (what the Hub reports for files stored outside LFS).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packager.errors import UsageError

#: Bytes read at a time: large enough to amortise system calls, small enough to stay out of the way.
CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class FileHash:
    """One file's size, SHA-256 and (when asked for) git blob id, from one read."""

    size: int
    sha256: str
    git_oid: str | None = None


def hash_file(path: Path, *, git_oid: bool = False) -> FileHash:
    """SHA-256 (and the git blob id `sha1("blob <size>\\0" + bytes)` with `git_oid`) of one file."""
    size = os.stat(path).st_size
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % size) if git_oid else None
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            sha256.update(chunk)
            if sha1 is not None:
                sha1.update(chunk)
    return FileHash(size, sha256.hexdigest(), sha1.hexdigest() if sha1 is not None else None)


def sha256_file(path: Path) -> str:
    return hash_file(path).sha256


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


_DIGESTS: dict[tuple, str] = {}
_DIGEST_LOCKS: dict[tuple, threading.Lock] = {}
_REGISTRY_LOCK = threading.Lock()


def memoised_sha256(path: Path) -> str:
    """`sha256_file`, once per (path, size, mtime) per process; a second caller waits for the first.

    A release asks for its source's digests several times (record, resume check, eval cache key), and
    conversion hashes the source on a thread of its own while it writes.
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _REGISTRY_LOCK:
        lock = _DIGEST_LOCKS.setdefault(key, threading.Lock())
    with lock:
        if key not in _DIGESTS:
            _DIGESTS[key] = sha256_file(path)
        return _DIGESTS[key]


def relative_paths(names: Iterable[str]) -> set[PurePosixPath]:
    """Paths relative to a root; ones that would leave it are dropped (as model_signing drops them)."""
    paths = {PurePosixPath(name) for name in names}
    return {path for path in paths if path.parts and not path.is_absolute() and ".." not in path.parts}


def list_files(root: Path, *, ignore: Iterable[str] = (), follow_symlinks: bool = False) -> list[str]:
    """Every file under `root` as a POSIX path relative to it, sorted as model_signing sorts them.

    A path equal to, or inside, an ignored path is left out. Symlinks are an error unless
    `follow_symlinks` (a release is plain files; a Hub cache snapshot is symlinks into its blobs); a
    broken symlink is listed, so that hashing it fails as a missing file would.

    Raises:
        UsageError: a symlink (without `follow_symlinks`), a link back to a folder above it, or a path
            that is neither a file nor a folder.
    """
    ignored = relative_paths(ignore)
    found: list[PurePosixPath] = []

    def visit(folder: Path, relative: PurePosixPath, ancestors: frozenset[str]) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = relative / entry.name
                if name in ignored or any(parent in ignored for parent in name.parents):
                    continue
                if entry.is_symlink() and not follow_symlinks:
                    raise UsageError(
                        f"'{root / name}' is a symlink; a release holds plain files",
                        hint="replace the link by a copy of the file",
                    )
                if entry.is_dir():
                    real = os.path.realpath(entry.path)
                    if real in ancestors:
                        raise UsageError(f"'{root / name}' links back to a folder above it")
                    visit(Path(entry.path), name, ancestors | {real})
                elif entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path)):
                    found.append(name)
                else:
                    raise UsageError(f"'{root / name}' is not a regular file or folder")

    visit(Path(root), PurePosixPath(), frozenset({os.path.realpath(root)}))
    return [str(name) for name in sorted(found)]


def cache_root() -> Path:
    """unswift's cache (materialised GGUF checkpoints, sampled text): `UNSWIFT_CACHE`, else ~/.cache/unswift."""
    return Path(os.environ.get("UNSWIFT_CACHE", Path.home() / ".cache" / "unswift"))
