"""Publisher keys, the signed manifest `model.sig` and its verification.

`model.sig` follows the OpenSSF model-signing v1.0 format, so that users can check a release with the
`model_signing` tool as well as with `unswift verify`: a Sigstore bundle (v0.3, JSON) holding a DSSE
envelope whose payload is an in-toto statement listing one SHA-256 per file ("files" serialization),
signed with an ECDSA key (P-256 with SHA-256 by default; P-384/SHA-384 and P-521/SHA-512 accepted).

The flow mirrors model_signing's layers: list the files (ignoring exactly what its CLI ignores), hash
each one, turn the digests into a statement, sign it; verification parses the bundle, checks the
signature, and compares the signed digests with a fresh hash of the folder, naming every difference.

No command-line logic and no network here; the CLI and the release pipeline call these functions.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from packager.errors import CheckFailed, UsageError
from packager.formats.atomic import write_text_atomic
from packager.formats.files import sha256_file
from packager.formats.record import NOT_PAYLOAD, RECORD, read_record, write_record

#: The signature's file name inside a release; it is never part of what it signs.
SIGNATURE_NAME = "model.sig"
#: Environment variable holding the signing key: a path to the PEM file, or the PEM text itself.
KEY_ENV = "UNSWIFT_SIGNING_KEY"
#: What `model_signing sign key DIR --signature DIR/model.sig` leaves out (recorded in the signature).
IGNORE_PATHS = ("model.sig", ".git", ".github", ".gitattributes", ".gitignore")
#: Download bookkeeping that `snapshot_download(local_dir=...)` adds; never part of a release.
HUB_METADATA_DIR = ".cache/huggingface"
#: Never published (`hub.push` skips it), so never signed either.
_UNPUBLISHED_DIR = ".cache"
#: Curve names accepted by `generate_key`, as `unswift keygen --curve` spells them.
CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}

_HASH_FOR_CURVE = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384, "secp521r1": hashes.SHA512}
_BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
_PAYLOAD_TYPE = "application/vnd.in-toto+json"
_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
_PREDICATE_TYPE = "https://model_signing/signature/v1.0"
_OTHER_KEY_KINDS = {
    "an Ed25519": (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey),
    "an Ed448": (ed448.Ed448PrivateKey, ed448.Ed448PublicKey),
    "an RSA": (rsa.RSAPrivateKey, rsa.RSAPublicKey),
    "a DSA": (dsa.DSAPrivateKey, dsa.DSAPublicKey),
}
_KEYGEN_HINT = "create an ECDSA P-256 key pair with: unswift keygen --out publisher.pem"
_PRIVATE_PEM_MARK = b"PRIVATE KEY-----"
#: Files below this size are scanned for a PEM private key before signing.
_SECRET_SCAN_BYTES = 4 << 20


@dataclass(frozen=True)
class KeyPair:
    """The files `generate_key` wrote and the fingerprint users compare with the model card."""

    private_key: Path
    public_key: Path
    key_fingerprint: str

    def to_json(self) -> dict[str, Any]:
        """The `keygen` JSON fields (CONTRACT)."""
        return {
            "private_key": str(self.private_key),
            "public_key": str(self.public_key),
            "key_fingerprint": self.key_fingerprint,
        }


@dataclass(frozen=True)
class SignResult:
    """What `sign` covered: every file of the release except `model.sig`, sorted as in the signature."""

    release_dir: Path
    files: tuple[str, ...]
    key_fingerprint: str
    signature: Path

    def to_json(self) -> dict[str, Any]:
        """The `sign` JSON fields (CONTRACT)."""
        return {
            "release_dir": str(self.release_dir),
            "files": list(self.files),
            "key_fingerprint": self.key_fingerprint,
            "signature": str(self.signature),
        }


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
        """The `verify` JSON fields (CONTRACT)."""
        return {
            "verified": self.verified,
            "files": list(self.files),
            "bad_files": [bad.to_json() for bad in self.bad_files],
            "key_fingerprint": self.key_fingerprint,
        }

    def describe_mismatch(self) -> str:
        """One line naming every bad file and its problem, e.g. ``model.safetensors (altered)``."""
        return ", ".join(f"{bad.path} ({bad.problem})" for bad in self.bad_files)


# ---------------------------------------------------------------------------------------------- keys


def key_fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """The key's SHA-256 fingerprint, the same value model_signing stores as the bundle's key hint.

    Args:
        public_key: The publisher's public key.

    Returns:
        Lowercase hex SHA-256 of the key's PEM SubjectPublicKeyInfo bytes; the card shows it, so users
        can tell that the key they hold is the publisher's.
    """
    return hashlib.sha256(_public_pem(public_key)).hexdigest()


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


def load_signing_key(key: str | os.PathLike[str] | None = None) -> ec.EllipticCurvePrivateKey:
    """Load the publisher's private key from a PEM file, or from `UNSWIFT_SIGNING_KEY` when `key` is None.

    Call it before any expensive work, so a bad key fails first. Error messages name the file or the
    variable, never the key text.

    Args:
        key: Path of a password-less PEM private key, or None to read `UNSWIFT_SIGNING_KEY` (a path to
            the PEM or the PEM text itself, as CI secrets usually are).

    Returns:
        The ECDSA private key (P-256, P-384 or P-521).

    Raises:
        UsageError: No key given, file missing, not a PEM private key, password-protected, or a key type
            OpenSSF model signing does not accept (Ed25519, RSA, other curves).
    """
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
        raise UsageError(f"{source} not found", hint="pass the publisher's public key, e.g. publisher.pub")
    data = path.read_bytes()
    if _PRIVATE_PEM_MARK in data:
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
    if _PRIVATE_PEM_MARK not in data:
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


def _signature_hash(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> ec.ECDSA:
    return ec.ECDSA(_HASH_FOR_CURVE[key.curve.name]())


# ------------------------------------------------------------------------------------------- signing


def sign(
    release_dir: str | os.PathLike[str],
    key: str | os.PathLike[str] | ec.EllipticCurvePrivateKey | None = None,
) -> SignResult:
    """Sign a release: record its payload and key, re-render the card, then write `model.sig` last.

    The order matters and lives only here: `unswift.json` gets the SHA-256 of every payload file and the
    key fingerprint, README.md is rendered from it (so the card shows the fingerprint), and only then is
    every file hashed into the signature, which is written atomically. An old `model.sig` is removed
    before anything changes, so a failed run never leaves a signature over files it no longer matches.

    > [!WARNING]
    > The folder must hold no symlinks, no `.cache/` folder (Hub download metadata, which `push` skips)
    > and no private key or `*.secret` file: everything in it is published and signed.

    Args:
        release_dir: The release folder (it must hold `unswift.json`).
        key: Path of the PEM private key, an already loaded key (see `load_signing_key`), or None to use
            `UNSWIFT_SIGNING_KEY`.

    Returns:
        The files covered, the key fingerprint and the path of `model.sig`.

    Raises:
        UsageError: Bad key (see `load_signing_key`), not a release folder, a key file inside the folder,
            or a file that must not be published (see the warning above).
    """
    from packager.publish.card import CARD_NAME, write_readme  # here, not at the top: card.py imports this module

    root = Path(release_dir)
    if not root.is_dir():
        raise UsageError(f"release folder '{root}' not found")
    record = read_record(root)
    if not isinstance(record, dict):
        raise UsageError(f"'{root / RECORD}' does not hold a JSON object; it is not a release record")
    private_key = key if isinstance(key, ec.EllipticCurvePrivateKey) else load_signing_key(key)
    fingerprint = key_fingerprint(private_key.public_key())
    names = _list_files(root, ignore=_as_paths(IGNORE_PATHS), follow_symlinks=False)
    _refuse_unpublishable(root, names)

    signature = root / SIGNATURE_NAME
    signature.unlink(missing_ok=True)
    digests = {name: sha256_file(root / name) for name in names if name not in NOT_PAYLOAD}
    record["payload"] = digests
    record["signing"] = {**(record.get("signing") or {}), "key_fingerprint": fingerprint}
    write_record(root, record)
    write_readme(root)
    for name in (RECORD, CARD_NAME):
        digests[name] = sha256_file(root / name)
    ordered = dict(sorted(digests.items(), key=lambda item: PurePosixPath(item[0])))
    statement = _statement(root.resolve().name, ordered)
    write_text_atomic(signature, json.dumps(_bundle(statement, private_key), indent=2) + "\n")
    return SignResult(root, tuple(ordered), fingerprint, signature)


def _statement(model_name: str, digests: dict[str, str]) -> dict[str, Any]:
    """The in-toto statement model_signing v1.0 expects; the subject digest covers the resource digests."""
    root_digest = hashlib.sha256(b"".join(bytes.fromhex(value) for value in digests.values()))
    return {
        "_type": _STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root_digest.hexdigest()}}],
        "predicateType": _PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": False,
                "ignore_paths": list(IGNORE_PATHS),
            },
            "resources": [
                {"name": name, "algorithm": "sha256", "digest": value} for name, value in digests.items()
            ],
        },
    }


def _bundle(statement: dict[str, Any], private_key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    payload = json.dumps(statement, separators=(",", ":")).encode()
    signature = private_key.sign(_pae(payload), _signature_hash(private_key))
    return {
        "mediaType": _BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": key_fingerprint(private_key.public_key())},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": _PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
        },
    }


def _pae(payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what the ECDSA signature is computed over."""
    return b"DSSEv1 %d %s %d %s" % (len(_PAYLOAD_TYPE), _PAYLOAD_TYPE.encode(), len(payload), payload)


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
        if path.suffix == ".secret":
            raise UsageError(f"'{root / name}' looks like a hardening secret; it must stay out of a release")
        file = root / name
        if file.stat().st_size <= _SECRET_SCAN_BYTES and _PRIVATE_PEM_MARK in file.read_bytes():
            raise UsageError(
                f"'{file}' holds a private key; a release is published, so keys must stay outside it",
                hint="move the key out of the release folder",
            )


# --------------------------------------------------------------------------------------- verification


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
    signature = root / SIGNATURE_NAME
    if not signature.is_file():
        raise UsageError(
            f"'{root}' has no {SIGNATURE_NAME}: the release is not signed",
            hint=f"the publisher signs it with: unswift sign {root} --key KEY",
        )
    key = public_key if isinstance(public_key, ec.EllipticCurvePublicKey) else load_public_key(public_key)
    fingerprint = key_fingerprint(key)
    statement = _open_bundle(signature.read_bytes(), key, fingerprint)
    expected, ignored = _signed_manifest(statement)

    present = set(_list_files(root, ignore=ignored | _as_paths(IGNORE_PATHS), follow_symlinks=True))
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
        if not PurePosixPath(name).is_relative_to(HUB_METADATA_DIR):
            bad.append(BadFile(name, "extra"))
    return VerifyReport(not bad, tuple(expected), tuple(bad), fingerprint)


def _corrupt(reason: str) -> CheckFailed:
    return CheckFailed(
        f"{SIGNATURE_NAME} is corrupted or not an OpenSSF model-signing signature: {reason}",
        hint="download the release again; if it persists, ask the publisher to re-sign it",
    )


def _field(obj: Any, dotted: str, kind: type) -> Any:
    """`obj["a"]["b"]` for ``"a.b"``, or a CheckFailed naming the missing or mistyped field."""
    value = obj
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise _corrupt(f"no '{dotted}'")
        value = value[part]
    if not isinstance(value, kind):
        raise _corrupt(f"'{dotted}' is not a {kind.__name__}")
    return value


def _decode_b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise _corrupt(f"{what} is not base64") from err


def _open_bundle(raw: bytes, key: ec.EllipticCurvePublicKey, fingerprint: str) -> dict[str, Any]:
    """Parse the bundle, check the key hint and the ECDSA signature; return the signed statement."""
    try:
        bundle = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise _corrupt(f"not JSON ({err})") from err
    media_type = _field(bundle, "mediaType", str)
    if not media_type.startswith("application/vnd.dev.sigstore.bundle"):
        raise _corrupt(f"media type '{media_type}' is not a Sigstore bundle")
    material = _field(bundle, "verificationMaterial", dict)
    if "publicKey" not in material and ({"certificate", "x509CertificateChain"} & material.keys()):
        raise UsageError(
            f"{SIGNATURE_NAME} was signed with Sigstore (a certificate, not a publisher key); "
            "unswift verify checks key signatures",
            hint="verify it with: model_signing verify sigstore DIR --signature DIR/model.sig "
            "--identity IDENTITY --identity_provider ISSUER (see docs/SIGNING.md)",
        )
    public_key = material.get("publicKey")
    hint = public_key.get("hint") if isinstance(public_key, dict) else None
    if hint and hint != fingerprint:
        raise CheckFailed(
            f"wrong key: {SIGNATURE_NAME} was signed by the key with fingerprint {hint}, "
            f"not by the given key ({fingerprint})",
            hint="get the publisher's public key; the model card names its fingerprint",
        )
    payload_type = _field(bundle, "dsseEnvelope.payloadType", str)
    if payload_type != _PAYLOAD_TYPE:
        raise _corrupt(f"payload type '{payload_type}' is not '{_PAYLOAD_TYPE}'")
    payload = _decode_b64(_field(bundle, "dsseEnvelope.payload", str), "the payload")
    signatures = _field(bundle, "dsseEnvelope.signatures", list)
    if not signatures:
        raise _corrupt("the envelope holds no signature")
    sig = _decode_b64(_field(signatures[0], "sig", str), "the signature")
    try:
        key.verify(sig, _pae(payload), _signature_hash(key))
    except InvalidSignature as err:
        raise CheckFailed(
            f"{SIGNATURE_NAME} does not check with the given key (fingerprint {fingerprint}): the "
            "signature or its manifest was altered, or another key signed it",
            hint="get the publisher's public key and the release again; the card names the key fingerprint",
        ) from err
    try:
        statement = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as err:
        raise _corrupt(f"the signed payload is not JSON ({err})") from err
    if not isinstance(statement, dict):
        raise _corrupt("the signed payload is not a JSON object")
    return statement


def _signed_manifest(statement: dict[str, Any]) -> tuple[dict[str, str], set[PurePosixPath]]:
    """The signed `{file: sha256}` in signed order, and the ignored paths the signer recorded."""
    if statement.get("_type") != _STATEMENT_TYPE:
        raise _corrupt(f"statement type {statement.get('_type')!r} is not '{_STATEMENT_TYPE}'")
    if statement.get("predicateType") != _PREDICATE_TYPE:
        raise UsageError(
            f"{SIGNATURE_NAME} uses predicate {statement.get('predicateType')!r}; unswift verify reads "
            "model-signing v1.0 signatures",
            hint="verify it with: model_signing verify key DIR --signature DIR/model.sig --public_key KEY",
        )
    method = _field(statement, "predicate.serialization.method", str)
    hash_type = _field(statement, "predicate.serialization.hash_type", str)
    if (method, hash_type) != ("files", "sha256"):
        raise UsageError(
            f"{SIGNATURE_NAME} hashes with method '{method}' and '{hash_type}'; unswift verify checks "
            "per-file SHA-256 signatures",
            hint="verify it with: model_signing verify key DIR --signature DIR/model.sig --public_key KEY",
        )
    ignored = _field(statement, "predicate.serialization", dict).get("ignore_paths", [])
    if not isinstance(ignored, list) or not all(isinstance(item, str) for item in ignored):
        raise _corrupt("'predicate.serialization.ignore_paths' is not a list of paths")
    expected: dict[str, str] = {}
    root_digest = hashlib.sha256()
    for resource in _field(statement, "predicate.resources", list):
        name = _field(resource, "name", str)
        digest = _field(resource, "digest", str)
        if _field(resource, "algorithm", str) != "sha256":
            raise _corrupt(f"resource '{name}' is not hashed with sha256")
        parts = PurePosixPath(name).parts
        if not parts or parts[0] == "/" or ".." in parts or name in expected:
            raise _corrupt(f"resource name {name!r} is not a unique path inside the release")
        try:
            root_digest.update(bytes.fromhex(digest))
        except ValueError as err:
            raise _corrupt(f"the digest of '{name}' is not hex") from err
        expected[name] = digest
    subjects = _field(statement, "subject", list)
    if len(subjects) != 1 or _field(subjects[0], "digest.sha256", str) != root_digest.hexdigest():
        raise _corrupt("the manifest is inconsistent: its subject digest does not cover its files")
    return expected, _as_paths(ignored)


# ------------------------------------------------------------------------------------------ file walk


def _as_paths(names: Iterable[str]) -> set[PurePosixPath]:
    """Ignored paths relative to the release root; ones that would leave it are dropped (as model_signing)."""
    paths = {PurePosixPath(name) for name in names}
    return {path for path in paths if path.parts and not path.is_absolute() and ".." not in path.parts}


def _list_files(root: Path, *, ignore: set[PurePosixPath], follow_symlinks: bool) -> list[str]:
    """Every file under `root` as a POSIX path relative to it, sorted as model_signing sorts them.

    Ignoring works as in model_signing: a path equal to, or inside, an ignored path. Symlinks are an
    error when signing (a release is plain files) and followed when verifying (Hub cache snapshots);
    a broken symlink is listed, so that its hash fails as a missing file.
    """
    found: list[PurePosixPath] = []

    def visit(folder: Path, relative: PurePosixPath, ancestors: frozenset[str]) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = relative / entry.name
                if name in ignore or any(parent in ignore for parent in name.parents):
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

    visit(root, PurePosixPath(), frozenset({os.path.realpath(root)}))
    return [str(name) for name in sorted(found)]
