"""The release's files on both sides: hashed locally, compared with a remote commit's file tree.

The push decides everything from this comparison: whether a commit is needed at all (re-running resumes),
which remote files to delete, and whether a commit or a tag really holds exactly the release. A local file
matches a remote one by SHA-256 and size when the Hub stores it in LFS, by git blob id otherwise (that is
what the Hub reports for a regular file), so both are computed in the one read `hash_file` makes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from huggingface_hub.hf_api import RepoFile

from packager import __version__
from packager.errors import UsageError
from packager.formats.files import hash_file, list_files, sha256_text
from packager.formats.names import RECORD

#: Never deleted, never compared unless the release carries its own: the Hub writes it into every new repo.
HUB_OWNED = ".gitattributes"
#: Folders at the top of the release never pushed (the ones `upload_folder` skips); a `.git` folder is
#: skipped at any depth.
_SKIPPED_DIRS = (".git", ".cache")


@dataclass(frozen=True)
class LocalFile:
    """One file of the release folder, as the push sends and compares it."""

    path: str  # posix, relative to the release folder
    abspath: Path
    size: int
    sha256: str
    git_oid: str  # git blob sha1: what the Hub reports for a regular (non-LFS) file


@dataclass(frozen=True)
class Diff:
    """How a remote file tree differs from the release."""

    missing: tuple[str, ...]  # in the release, not on the remote
    altered: tuple[str, ...]  # on both, different content
    stale: tuple[str, ...]  # on the remote, no longer in the release (to delete)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.altered or self.stale)

    def describe(self) -> str:
        """At most five paths per kind of difference, for an error message."""
        parts = [
            f"{label}: {', '.join(repr(p) for p in paths[:5])}{' …' if len(paths) > 5 else ''}"
            for label, paths in (("missing", self.missing), ("altered", self.altered), ("extra", self.stale))
            if paths
        ]
        return "; ".join(parts) or "identical"


def local_files(release: Path) -> dict[str, LocalFile]:
    """Every file of the release folder, hashed (sha256 and git blob id in one read).

    A symlink is followed (its target's bytes are what gets uploaded); a dangling one is not pushed.
    """
    files: dict[str, LocalFile] = {}
    for rel in list_files(release, ignore=_SKIPPED_DIRS, follow_symlinks=True):
        path = release / rel
        folders = PurePosixPath(rel).parts[:-1]
        if ".git" in folders or not path.is_file():
            continue
        if ".cache" in folders:  # the Hub client refuses such paths: say so before any upload
            raise UsageError(f"'{release / rel}' lies in a '.cache' folder, which the Hub does not accept",
                             hint="remove the .cache folder from the release")
        digest = hash_file(path, git_oid=True)
        assert digest.git_oid is not None
        files[rel] = LocalFile(rel, path, digest.size, digest.sha256, digest.git_oid)
    return files


def diff(files: dict[str, LocalFile], remote: dict[str, RepoFile]) -> Diff:
    """Compare the release with a remote file tree (path -> entry of `list_repo_tree`)."""
    missing, altered = [], []
    for path, local in files.items():
        entry = remote.get(path)
        if entry is None:
            missing.append(path)
        elif entry.lfs is not None:
            if entry.lfs.sha256 != local.sha256 or entry.size != local.size:
                altered.append(path)
        elif entry.blob_id != local.git_oid:
            altered.append(path)
    stale = [path for path in remote if path not in files and path != HUB_OWNED]
    return Diff(tuple(missing), tuple(altered), tuple(sorted(stale)))


def default_tag_of(release: Path, files: dict[str, LocalFile]) -> str:
    """`v<tool version>-<first 8 hex of the release digest>`; see `default_tag` for why."""
    record = json.loads((release / RECORD).read_text(encoding="utf-8"))
    tool = record.get("tool") if isinstance(record, dict) else None
    version = tool.get("version") if isinstance(tool, dict) else None
    version = str(version or __version__)
    digest = sha256_text("".join(f"{p} {f.sha256}\n" for p, f in sorted(files.items())))
    return f"v{version.lstrip('v')}-{digest[:8]}"
