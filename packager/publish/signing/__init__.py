"""Publisher keys, the signed manifest `model.sig` and its verification."""

from packager.publish.signing.signing import *  # noqa: F401,F403
from packager.publish.signing.signing import (  # noqa: F401
    CURVES,
    KEY_ENV,
    SIGNATURE_NAME,
    generate_key,
    key_fingerprint,
    load_public_key,
    load_signing_key,
    sign,
    verify,
)
