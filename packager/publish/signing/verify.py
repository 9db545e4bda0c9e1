"""Verify a folder against its `model.sig`: check the signature, then compare every file with the manifest.

The report names every file that is missing, extra or altered rather than stopping at the first, so a
user learns at once what a broken download or a tampered release changed. Downloads come in three
shapes and all verify: a release folder, a `local_dir` download (with `.cache/huggingface/` bookkeeping
beside the files) and a Hub cache snapshot (symlinks into the cache's blobs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec

from packager.errors import UsageError
from packager.formats.files import list_files, sha256_file
from packager.formats.names import SIGNATURE, UNSIGNED
from packager.publish.signing.bundle import open_bundle, signed_manifest
from packager.publish.signing.keys import key_fingerprint, load_public_key

#: Download bookkeeping that `snapshot_download(local_dir=...)` adds; never part of a release.
_HUB_METADATA_DIR = ".cache/huggingface"


@dataclass(frozen=True)
class BadFile:
    """One file that differs from the signed manifest."""

    path: str
    problem: Literal["missing", "extra", "altered"]

    def to_json(self) -> dict[str, str]:
        """`{"path", "problem"}` as in the `verify` JSON."""
        return {"path": self.path, "problem": self.problem}


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of `verify`: which files the signature covers and which of them differ.

    `verified` is true only when the signature checks with the given key and no file is missing, extra
    or altered.
    """

    verified: bool
    files: tuple[str, ...]
    bad_files: tuple[BadFile, ...]
    key_fingerprint: str

    def to_json(self) -> dict[str, Any]:
        """The `verify` JSON fields (docs/INTERFACE.md)."""
        return {
            "verified": self.verified,
            "files": list(self.files),
            "bad_files": [bad.to_json() for bad in self.bad_files],
            "key_fingerprint": self.key_fingerprint,
        }

    def describe_mismatch(self) -> str:
        """One line naming every bad file and its problem, e.g. ``model.safetensors (altered)``."""
        return ", ".join(f"{bad.path} ({bad.problem})" for bad in self.bad_files)


def verify(
    path: str | os.PathLike[str], public_key: str | os.PathLike[str] | ec.EllipticCurvePublicKey
) -> VerifyReport:
    """Check `model.sig` with the publisher's public key and compare every file with the signed manifest.

    Works on a release folder, a `local_dir` download (its `.cache/huggingface/` bookkeeping is not
    counted as extra, but a signed file in it is still checked) and a Hub cache snapshot, whose files are
    symlinks into the cache's blobs (followed, like `model_signing --allow_symlinks`). The paths the
    signature records as ignored (`.gitattributes` among them) are ignored, as model_signing does.

    Args:
        path: The downloaded or local release folder.
        public_key: Path of the publisher's PEM public key, or the loaded key.

    Returns:
        The report; `verified` is false when any file is missing, extra or altered, and `bad_files`
        names each one. A signature that does not check raises instead.

    Raises:
        UsageError: No folder, no `model.sig` (an unsigned release), a bad public key, or a signature
            made without a key (Sigstore keyless) or with hashing unswift does not check.
        CheckFailed: The key is not the one that signed, `model.sig` is corrupted, or its manifest is
            inconsistent.
    """
    root = Path(path)
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "not found"
        raise UsageError(f"release folder '{root}' {problem}")
    signature = root / SIGNATURE
    if not signature.is_file():
        raise UsageError(
            f"'{root}' has no {SIGNATURE}: the release is not signed",
            hint=f"the publisher signs it with: unswift sign {root} --key KEY",
        )
    key = public_key if isinstance(public_key, ec.EllipticCurvePublicKey) else load_public_key(public_key)
    fingerprint = key_fingerprint(key)
    expected, ignored = signed_manifest(open_bundle(signature.read_bytes(), key, fingerprint))

    present = set(list_files(root, ignore=[*ignored, *UNSIGNED], follow_symlinks=True))
    bad: list[BadFile] = []
    for name, digest in expected.items():
        if name not in present:
            bad.append(BadFile(name, "missing"))
            continue
        try:
            actual = sha256_file(root / name)
        except FileNotFoundError:  # a symlink whose blob is gone
            bad.append(BadFile(name, "missing"))
            continue
        if actual != digest:
            bad.append(BadFile(name, "altered"))
    for name in sorted(present - expected.keys(), key=PurePosixPath):
        if not PurePosixPath(name).is_relative_to(_HUB_METADATA_DIR):
            bad.append(BadFile(name, "extra"))
    return VerifyReport(not bad, tuple(expected), tuple(bad), fingerprint)
