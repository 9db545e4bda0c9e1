"""Publisher keys, the signature `model.sig` (OpenSSF model-signing v1.0) and its verification.

`model.sig` follows the OpenSSF model-signing v1.0 format, so that users can check a release with the
`model_signing` tool as well as with `unswift verify`. The package knows nothing of releases beyond
their files: what goes into the record and the card before signing is `packager.publish.seal`.

    keys.py    curves, key generation, loading private/public keys, fingerprints, key-kind checks
    bundle.py  the format: in-toto statement, DSSE pre-authentication encoding, bundle build and check
    sign.py    list and hash a folder's files, write `model.sig` over them
    verify.py  check `model.sig` and name every missing, extra or altered file

`signing.sign` and `signing.verify` are the functions (they shadow the modules of the same name).
No command-line logic and no network here.
"""

from packager.publish.signing.keys import (
    CURVES,
    KEY_ENV,
    KeyPair,
    generate_key,
    key_fingerprint,
    load_public_key,
    load_signing_key,
)
from packager.publish.signing.sign import SignResult, sign, signable_files
from packager.publish.signing.verify import BadFile, VerifyReport, verify

__all__ = [
    "CURVES",
    "KEY_ENV",
    "BadFile",
    "KeyPair",
    "SignResult",
    "VerifyReport",
    "generate_key",
    "key_fingerprint",
    "load_public_key",
    "load_signing_key",
    "sign",
    "signable_files",
    "verify",
]
