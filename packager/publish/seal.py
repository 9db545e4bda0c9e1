"""Seal a release: record what is signed, render the card from it, then sign (what `unswift sign` does).

The order matters and lives only here. `unswift.json` gets the SHA-256 of every payload file and the
key fingerprint; README.md is rendered from that record (so the card shows the fingerprint users check
the key against); only then is every file hashed into `model.sig`, which is written last. This module
is the one place that knows both the card and the signature: `card` and `signing` import neither
each other nor this.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from packager.errors import UsageError
from packager.formats.files import sha256_file
from packager.formats.names import NOT_PAYLOAD, RECORD, SIGNATURE
from packager.formats.record import read_record, write_record
from packager.publish import signing
from packager.publish.card import write_readme


def seal(
    release_dir: str | os.PathLike[str],
    key: str | os.PathLike[str] | ec.EllipticCurvePrivateKey | None = None,
) -> signing.SignResult:
    """Sign a release: record its payload and key, re-render the card, then write `model.sig` last.

    The key and the folder are checked before anything changes; an old `model.sig` is removed before
    the record is, so a failed run never leaves a signature over files it no longer matches.

    > [!WARNING]
    > The folder must hold no symlinks, no `.cache/` folder (Hub download metadata, which `push` skips)
    > and no private key or `*.secret` file: everything in it is published and signed.

    Args:
        release_dir: The release folder (it must hold `unswift.json`).
        key: Path of the PEM private key, an already loaded key (see `signing.load_signing_key`), or
            None to use `UNSWIFT_SIGNING_KEY`.

    Returns:
        The files covered, the key fingerprint and the path of `model.sig`.

    Raises:
        UsageError: Bad key (see `signing.load_signing_key`), not a release folder, a key file inside
            the folder, or a file that must not be published (see the warning above).
    """
    root = Path(release_dir)
    if not root.is_dir():
        raise UsageError(f"release folder '{root}' not found")
    record = read_record(root)
    if not isinstance(record, dict):
        raise UsageError(f"'{root / RECORD}' does not hold a JSON object; it is not a release record")
    private_key = signing.load_signing_key(key)
    fingerprint = signing.key_fingerprint(private_key.public_key())
    names = signing.signable_files(root)  # refuses an unpublishable folder before anything changes

    (root / SIGNATURE).unlink(missing_ok=True)
    payload = {name: sha256_file(root / name) for name in names if name not in NOT_PAYLOAD}
    record["payload"] = payload
    record["signing"] = {**(record.get("signing") or {}), "key_fingerprint": fingerprint}
    write_record(root, record)
    write_readme(root)
    return signing.sign(root, private_key, known=payload)
