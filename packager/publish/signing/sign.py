"""Sign a folder: list its files, hash each one, and write `model.sig` over them.

The flow mirrors model_signing's layers: list the files (ignoring exactly what its CLI ignores,
`formats.names.UNSIGNED`), hash each one, turn the digests into a statement and sign it (`bundle`).
Everything in the folder is signed as it stands; making a *release* ready first (recording the payload
and the key in `unswift.json`, rendering the card) is `packager.publish.seal`, which calls this.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from packager.errors import UsageError
from packager.formats.atomic import write_text_atomic
from packager.formats.files import list_files, sha256_file
from packager.formats.names import SECRET_SUFFIX, SIGNATURE, UNSIGNED
from packager.publish.signing.bundle import build_bundle, statement
from packager.publish.signing.keys import PRIVATE_PEM_MARK, key_fingerprint, load_signing_key

#: Never published (`hub.push` skips it, e.g. Hub download metadata), so never signed either.
_UNPUBLISHED_DIR = ".cache"
#: Files up to this size are scanned for a PEM private key before signing.
_SECRET_SCAN_BYTES = 4 << 20


@dataclass(frozen=True)
class SignResult:
    """What `sign` covered: every file of the folder except `model.sig`, sorted as in the signature."""

    release_dir: Path
    files: tuple[str, ...]
    key_fingerprint: str
    signature: Path

    def to_json(self) -> dict[str, Any]:
        """The `sign` JSON fields (docs/INTERFACE.md)."""
        return {
            "release_dir": str(self.release_dir),
            "files": list(self.files),
            "key_fingerprint": self.key_fingerprint,
            "signature": str(self.signature),
        }


def sign(
    folder: str | os.PathLike[str],
    key: str | os.PathLike[str] | ec.EllipticCurvePrivateKey | None = None,
    *,
    known: Mapping[str, str] | None = None,
) -> SignResult:
    """Write `model.sig` (OpenSSF model-signing v1.0) over every other file of `folder`, as it stands.

    An old `model.sig` is removed before hashing, so a failed run never leaves a signature over files it
    no longer matches; the new one is written atomically. The folder's record and card are not touched:
    to sign a release, use `packager.publish.seal.seal`, which updates them first.

    > [!WARNING]
    > The folder must hold no symlinks, no `.cache/` folder (Hub download metadata, which `push` skips)
    > and no private key or `*.secret` file: everything in it is published and signed.

    Args:
        folder: The folder to sign.
        key: Path of the PEM private key, an already loaded key (see `load_signing_key`), or None to use
            `UNSWIFT_SIGNING_KEY`.
        known: SHA-256 digests the caller has just taken of files it has not changed since, keyed by
            relative POSIX path; those files are not read again (a release's payload can be large).

    Returns:
        The files covered, the key fingerprint and the path of `model.sig`.

    Raises:
        UsageError: Bad key (see `load_signing_key`), no such folder, or a file that must not be
            published (see the warning above).
    """
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"release folder '{root}' not found")
    private_key = load_signing_key(key)
    names = signable_files(root)
    (root / SIGNATURE).unlink(missing_ok=True)
    known = known or {}
    digests = {name: known[name] if name in known else sha256_file(root / name) for name in names}
    ordered = dict(sorted(digests.items(), key=lambda item: PurePosixPath(item[0])))
    signed = statement(root.resolve().name, ordered)
    signature = root / SIGNATURE
    write_text_atomic(signature, json.dumps(build_bundle(signed, private_key), indent=2) + "\n")
    return SignResult(root, tuple(ordered), key_fingerprint(private_key.public_key()), signature)


def signable_files(root: Path) -> list[str]:
    """The files a signature over `root` covers, after refusing anything that must not be published.

    Returns:
        Every file but the ignored ones (`formats.names.UNSIGNED`), as sorted relative POSIX paths.

    Raises:
        UsageError: A symlink, a `.cache/` folder, a `*.secret` file, or a file holding a PEM private key.
    """
    names = list_files(root, ignore=UNSIGNED, follow_symlinks=False)
    _refuse_unpublishable(root, names)
    return names


def _refuse_unpublishable(root: Path, names: Iterable[str]) -> None:
    """Stop before signing anything that must not be published or that no download reproduces."""
    for name in names:
        path = PurePosixPath(name)
        if path.is_relative_to(_UNPUBLISHED_DIR):
            raise UsageError(
                f"'{root}' holds a '{_UNPUBLISHED_DIR}/' folder (e.g. Hub download metadata), which is never "
                "published; sign a clean release folder",
                hint=f"remove '{root / _UNPUBLISHED_DIR}' first",
            )
        if path.suffix == SECRET_SUFFIX:
            raise UsageError(f"'{root / name}' looks like a hardening secret; it must stay out of a release")
        file = root / name
        if file.stat().st_size <= _SECRET_SCAN_BYTES and PRIVATE_PEM_MARK in file.read_bytes():
            raise UsageError(
                f"'{file}' holds a private key; a release is published, so keys must stay outside it",
                hint="move the key out of the release folder",
            )
