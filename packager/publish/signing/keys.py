"""Publisher keys: create a key pair, load the private or the public key, and name a key by its fingerprint.

OpenSSF model signing with keys accepts ECDSA only (P-256 with SHA-256 by default; P-384/SHA-384 and
P-521/SHA-512 too), so every loader checks the key's kind and names what it found instead when it is an
Ed25519, RSA or other key. Keys are password-less PEM files kept out of the release (signing runs
unattended from CI secrets; no prompts); error messages name the file or the variable, never the key text.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from packager.errors import UsageError
from packager.formats.atomic import write_text_atomic
from packager.formats.names import RECORD

#: Environment variable holding the signing key: a path to the PEM file, or the PEM text itself.
KEY_ENV = "UNSWIFT_SIGNING_KEY"
#: Curve names accepted by `generate_key`, as `unswift keygen --curve` spells them.
CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}
#: What marks PEM private key text; signing also scans the release for it, so a key is never published.
PRIVATE_PEM_MARK = b"PRIVATE KEY-----"

_HASH_FOR_CURVE = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384, "secp521r1": hashes.SHA512}
_OTHER_KEY_KINDS = {
    "an Ed25519": (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey),
    "an Ed448": (ed448.Ed448PrivateKey, ed448.Ed448PublicKey),
    "an RSA": (rsa.RSAPrivateKey, rsa.RSAPublicKey),
    "a DSA": (dsa.DSAPrivateKey, dsa.DSAPublicKey),
}
_KEYGEN_HINT = "create an ECDSA P-256 key pair with: unswift keygen --out publisher.pem"


@dataclass(frozen=True)
class KeyPair:
    """The files `generate_key` wrote and the fingerprint users compare with the model card."""

    private_key: Path
    public_key: Path
    key_fingerprint: str

    def to_json(self) -> dict[str, Any]:
        """The `keygen` JSON fields (docs/INTERFACE.md)."""
        return {
            "private_key": str(self.private_key),
            "public_key": str(self.public_key),
            "key_fingerprint": self.key_fingerprint,
        }


def key_fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """The key's SHA-256 fingerprint, the same value model_signing stores as the bundle's key hint.

    Args:
        public_key: The publisher's public key.

    Returns:
        Lowercase hex SHA-256 of the key's PEM SubjectPublicKeyInfo bytes; the card shows it, so users
        can tell that the key they hold is the publisher's.
    """
    return hashlib.sha256(_public_pem(public_key)).hexdigest()


def signature_algorithm(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> ec.ECDSA:
    """ECDSA with the hash model_signing pairs with the key's curve (SHA-256, -384 or -512)."""
    return ec.ECDSA(_HASH_FOR_CURVE[key.curve.name]())


def generate_key(out: str | os.PathLike[str], *, curve: str = "P-256", overwrite: bool = False) -> KeyPair:
    """Create a password-less ECDSA key pair: `out` (private, PEM PKCS#8, mode 0600) and `out.pub`.

    Password-less because signing runs unattended (CI secrets, `UNSWIFT_SIGNING_KEY`) and secrets never
    come from prompts; the file mode keeps the private key to its owner.

    Args:
        out: Path of the private key; the public key is written beside it with `.pub` appended.
        curve: ``"P-256"`` (default), ``"P-384"`` or ``"P-521"``, the curves model_signing accepts.
        overwrite: Replace existing key files (a replaced key can no longer sign new releases).

    Returns:
        The two paths and the key fingerprint.

    Raises:
        UsageError: Unknown curve, a key file already exists without `overwrite`, or `out` lies inside a
            release folder (which is published).
    """
    if curve not in CURVES:
        raise UsageError(f"unknown curve '{curve}'; choose one of {', '.join(CURVES)}")
    private_path = Path(out)
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if (path.exists() or path.is_symlink()) and not overwrite:
            raise UsageError(f"key file '{path}' exists", hint="pass --overwrite to replace the key pair")
    if (private_path.parent / RECORD).exists():
        raise UsageError(
            f"'{private_path.parent}' is a release folder, which is published; keep keys outside it",
            hint="choose another --out, e.g. ~/.config/unswift/publisher.pem",
        )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(CURVES[curve]())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_text_atomic(private_path, private_pem.decode(), mode=0o600)
    write_text_atomic(public_path, _public_pem(key.public_key()).decode())
    return KeyPair(private_path, public_path, key_fingerprint(key.public_key()))


def load_signing_key(
    key: str | os.PathLike[str] | ec.EllipticCurvePrivateKey | None = None,
) -> ec.EllipticCurvePrivateKey:
    """Load the publisher's private key from a PEM file, or from `UNSWIFT_SIGNING_KEY` when `key` is None.

    Call it before any expensive work, so a bad key fails first. Error messages name the file or the
    variable, never the key text.

    Args:
        key: Path of a password-less PEM private key; None to read `UNSWIFT_SIGNING_KEY` (a path to the
            PEM or the PEM text itself, as CI secrets usually are); or a key already loaded by this
            function, returned as it is (so callers can pass either along).

    Returns:
        The ECDSA private key (P-256, P-384 or P-521).

    Raises:
        UsageError: No key given, file missing, not a PEM private key, password-protected, or a key type
            OpenSSF model signing does not accept (Ed25519, RSA, other curves).
    """
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key
    if key is None:
        value = os.environ.get(KEY_ENV, "").strip()
        if not value:
            raise UsageError(f"no signing key: pass --key KEY or set {KEY_ENV}", hint=_KEYGEN_HINT)
        if value.startswith("-----BEGIN"):
            return _private_key_from_pem(value.encode(), source=KEY_ENV)
        path = Path(value)
        if not path.is_file():
            # The value is not echoed: it may be key material pasted without its PEM header.
            raise UsageError(f"{KEY_ENV} is neither PEM text nor the path of an existing file")
        return _private_key_from_pem(path.read_bytes(), source=f"signing key '{path}' (from {KEY_ENV})")
    path = Path(key)
    if not path.is_file():
        raise UsageError(f"signing key '{path}' not found", hint=_KEYGEN_HINT)
    return _private_key_from_pem(path.read_bytes(), source=f"signing key '{path}'")


def load_public_key(key: str | os.PathLike[str]) -> ec.EllipticCurvePublicKey:
    """Load a publisher's public key (PEM SubjectPublicKeyInfo, e.g. the `.pub` file `keygen` wrote).

    Args:
        key: Path of the PEM public key.

    Returns:
        The ECDSA public key.

    Raises:
        UsageError: File missing, a private key given instead (it must not be passed around), not a PEM
            public key, or a key type model signing does not accept.
    """
    path = Path(key)
    source = f"public key '{path}'"
    if not path.is_file():
        raise UsageError(f"{source} not found", hint="pass the publisher's public key, e.g. publisher.pem.pub")
    data = path.read_bytes()
    if PRIVATE_PEM_MARK in data:
        raise UsageError(
            f"'{path}' is a private key; verification takes the publisher's public key",
            hint=f"pass '{path}.pub' (written by unswift keygen) and keep the private key private",
        )
    try:
        public_key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as err:
        raise UsageError(f"{source} is not a PEM public key") from err
    return _check_key_kind(public_key, source)


def _private_key_from_pem(data: bytes, *, source: str) -> ec.EllipticCurvePrivateKey:
    if PRIVATE_PEM_MARK not in data:
        if b"PUBLIC KEY-----" in data:
            raise UsageError(
                f"{source} is a public key; signing needs the private key", hint="pass KEY, not KEY.pub"
            )
        raise UsageError(f"{source} is not a PEM private key", hint=_KEYGEN_HINT)
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except TypeError as err:  # cryptography's signal for an encrypted key
        raise UsageError(
            f"{source} is password-protected; unswift signs with password-less keys kept in a mode-0600 "
            "file or a CI secret",
            hint="export it without a password: openssl pkey -in KEY -out KEY.nopass && chmod 600 KEY.nopass",
        ) from err
    except (ValueError, UnsupportedAlgorithm) as err:
        raise UsageError(f"{source} is not a readable PEM private key", hint=_KEYGEN_HINT) from err
    return _check_key_kind(private_key, source)


def _check_key_kind(key: Any, source: str) -> Any:
    """The key itself if model signing accepts it (ECDSA on P-256/384/521), else a UsageError naming its kind."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if key.curve.name in _HASH_FOR_CURVE:
            return key
        kind = f"an ECDSA key on curve '{key.curve.name}'"
    else:
        names = (name for name, classes in _OTHER_KEY_KINDS.items() if isinstance(key, classes))
        kind = f"{next(names, 'a ' + type(key).__name__)} key"
    raise UsageError(
        f"{source} is {kind}; OpenSSF model signing accepts only ECDSA keys on P-256, P-384 or P-521",
        hint=_KEYGEN_HINT,
    )


def _public_pem(public_key: ec.EllipticCurvePublicKey) -> bytes:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return public_key.public_bytes(serialization.Encoding.PEM, spki)
