"""The OpenSSF model-signing v1.0 format of `model.sig`: build a signed bundle, and open one back.

`model.sig` is a Sigstore bundle (v0.3, JSON) holding a DSSE envelope whose payload is an in-toto
statement listing one SHA-256 per file ("files" serialization); the ECDSA signature is computed over the
DSSE pre-authentication encoding of that payload. Writing exactly this layout is what lets users check a
release with the `model_signing` tool as well as with `unswift verify`.

Only the format lives here: no file walking and no hashing (`sign` and `verify` do those). Opening a
bundle checks the key hint and the signature and returns the signed `{file: sha256}` manifest; anything
malformed is a CheckFailed that says the file is corrupted, while a valid signature of a kind unswift
does not check (keyless Sigstore, other hashing) is a UsageError pointing to `model_signing`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from packager.errors import CheckFailed, UsageError
from packager.formats.names import SIGNATURE, UNSIGNED
from packager.publish.signing.keys import key_fingerprint, signature_algorithm

_BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
_PAYLOAD_TYPE = "application/vnd.in-toto+json"
_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
_PREDICATE_TYPE = "https://model_signing/signature/v1.0"


def statement(model_name: str, digests: Mapping[str, str]) -> dict[str, Any]:
    """The in-toto statement model_signing v1.0 expects; the subject digest covers the resource digests.

    Args:
        model_name: The subject's name (model_signing uses the folder's name).
        digests: `{relative POSIX path: sha256 hex}` in the order the signature lists them.
    """
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
                "ignore_paths": list(UNSIGNED),
            },
            "resources": [
                {"name": name, "algorithm": "sha256", "digest": value} for name, value in digests.items()
            ],
        },
    }


def build_bundle(signed: dict[str, Any], private_key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """The Sigstore bundle holding `signed` (a statement) in a DSSE envelope signed with `private_key`."""
    payload = json.dumps(signed, separators=(",", ":")).encode()
    signature = private_key.sign(pae(payload), signature_algorithm(private_key))
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


def pae(payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what the ECDSA signature is computed over."""
    return b"DSSEv1 %d %s %d %s" % (len(_PAYLOAD_TYPE), _PAYLOAD_TYPE.encode(), len(payload), payload)


def open_bundle(raw: bytes, key: ec.EllipticCurvePublicKey, fingerprint: str) -> dict[str, Any]:
    """Parse the bundle, check the key hint and the ECDSA signature; return the signed statement.

    Args:
        raw: The bytes of `model.sig`.
        key: The publisher's public key.
        fingerprint: `key_fingerprint(key)`, compared with the bundle's key hint.

    Raises:
        CheckFailed: Not a bundle, another key signed it, or the signature does not check.
        UsageError: A keyless (Sigstore certificate) signature, which `model_signing` verifies instead.
    """
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
            f"{SIGNATURE} was signed with Sigstore (a certificate, not a publisher key); "
            "unswift verify checks key signatures",
            hint="verify it with: model_signing verify sigstore DIR --signature DIR/model.sig "
            "--identity IDENTITY --identity_provider ISSUER (see docs/SIGNING.md)",
        )
    public_key = material.get("publicKey")
    hint = public_key.get("hint") if isinstance(public_key, dict) else None
    if hint and hint != fingerprint:
        raise CheckFailed(
            f"wrong key: {SIGNATURE} was signed by the key with fingerprint {hint}, "
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
        key.verify(sig, pae(payload), signature_algorithm(key))
    except InvalidSignature as err:
        raise CheckFailed(
            f"{SIGNATURE} does not check with the given key (fingerprint {fingerprint}): the "
            "signature or its manifest was altered, or another key signed it",
            hint="get the publisher's public key and the release again; the card names the key fingerprint",
        ) from err
    try:
        signed = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as err:
        raise _corrupt(f"the signed payload is not JSON ({err})") from err
    if not isinstance(signed, dict):
        raise _corrupt("the signed payload is not a JSON object")
    return signed


def signed_manifest(signed: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The signed `{file: sha256}` in signed order, and the ignored paths the signer recorded.

    Raises:
        CheckFailed: A malformed statement, a resource path that leaves the release or repeats, or a
            subject digest that does not cover the listed digests.
        UsageError: Another predicate or hashing than model-signing v1.0 per-file SHA-256.
    """
    if signed.get("_type") != _STATEMENT_TYPE:
        raise _corrupt(f"statement type {signed.get('_type')!r} is not '{_STATEMENT_TYPE}'")
    if signed.get("predicateType") != _PREDICATE_TYPE:
        raise UsageError(
            f"{SIGNATURE} uses predicate {signed.get('predicateType')!r}; unswift verify reads "
            "model-signing v1.0 signatures",
            hint="verify it with: model_signing verify key DIR --signature DIR/model.sig --public_key KEY",
        )
    method = _field(signed, "predicate.serialization.method", str)
    hash_type = _field(signed, "predicate.serialization.hash_type", str)
    if (method, hash_type) != ("files", "sha256"):
        raise UsageError(
            f"{SIGNATURE} hashes with method '{method}' and '{hash_type}'; unswift verify checks "
            "per-file SHA-256 signatures",
            hint="verify it with: model_signing verify key DIR --signature DIR/model.sig --public_key KEY",
        )
    ignored = _field(signed, "predicate.serialization", dict).get("ignore_paths", [])
    if not isinstance(ignored, list) or not all(isinstance(item, str) for item in ignored):
        raise _corrupt("'predicate.serialization.ignore_paths' is not a list of paths")
    expected: dict[str, str] = {}
    root_digest = hashlib.sha256()
    for resource in _field(signed, "predicate.resources", list):
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
    subjects = _field(signed, "subject", list)
    if len(subjects) != 1 or _field(subjects[0], "digest.sha256", str) != root_digest.hexdigest():
        raise _corrupt("the manifest is inconsistent: its subject digest does not cover its files")
    return expected, ignored


def _corrupt(reason: str) -> CheckFailed:
    return CheckFailed(
        f"{SIGNATURE} is corrupted or not an OpenSSF model-signing signature: {reason}",
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
