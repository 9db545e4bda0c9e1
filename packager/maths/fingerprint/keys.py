"""Keys and patterns: everything secret-dependent derives from the publisher's one secret by HMAC-SHA256.

    recipient_key(secret, r)    = HMAC(secret, "unswift/fingerprint/v1/recipient\\0" ‖ utf8(r))
    seed(key, ρ)                = LE64(HMAC(key, "unswift/fingerprint/v1/tensor\\0" ‖ utf8(ρ))[:8]) & (2⁶³ − 1)
    G(key, ρ)                   = torch.randn((out, in), generator=Generator().manual_seed(seed), float32)
    hardening_secret(secret, r) = hex(HMAC(secret, "unswift/fingerprint/v1/hardening\\0" ‖ utf8(r)))

ρ is a role key (`roles.Role.key`, e.g. "layer=3/q"), not a file's tensor name, so that fused, packed
or re-saved layouts map to the same pattern. The hardening secret gives each recipient's TaylorMLP
release its own hardening from a different domain label: the publisher keeps one secret, and neither
derived value reveals the other or the secret.

The patterns come from torch's CPU Mersenne Twister (stable in practice, not by contract):
`pattern_digest` is stored in the ledger and checked by the trace, so that a torch whose stream changed
is refused instead of silently scoring zero.
"""

from __future__ import annotations

import hashlib
import hmac

import torch

DOMAIN = b"unswift/fingerprint/v1"
#: The pattern scheme's name, recorded in a release and in the ledger.
SCHEME = "unswift-fingerprint-v1"


def _hmac(key: bytes, label: bytes) -> bytes:
    return hmac.new(key, label, hashlib.sha256).digest()


def recipient_key(secret: bytes, recipient: str) -> bytes:
    """The 32-byte key of one recipient's patterns."""
    return _hmac(secret, DOMAIN + b"/recipient\0" + recipient.encode("utf-8"))


def hardening_secret(secret: bytes, recipient: str) -> bytes:
    """The TaylorMLP hardening secret of `recipient`'s release (hex text, like the package's secrets)."""
    return _hmac(secret, DOMAIN + b"/hardening\0" + recipient.encode("utf-8")).hex().encode()


def tensor_seed(key: bytes, role: str) -> int:
    """The 63-bit seed of one role's pattern under a recipient key."""
    digest = _hmac(key, DOMAIN + b"/tensor\0" + role.encode("utf-8"))
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator_for(secret: bytes, label: str) -> torch.Generator:
    """A generator for secret-dependent randomness other than patterns (sampled labels, benchmarks)."""
    digest = _hmac(secret, DOMAIN + b"/other\0" + label.encode("utf-8"))
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def raw_pattern(key: bytes, role: str, shape: tuple[int, int]) -> torch.Tensor:
    """G: i.i.d. N(0, 1) float32 of `shape`, reproducible from (key, role) alone."""
    generator = torch.Generator().manual_seed(tensor_seed(key, role))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


#: The key `pattern_digest` is taken under: a constant, so the digest says nothing about any secret.
_DIGEST_KEY = b"unswift/fingerprint/v1/digest-key"


def pattern_digest() -> str:
    """A digest of one fixed pattern (constant key): equal on two machines iff their torch draws the same noise."""
    return hashlib.sha256(raw_pattern(_DIGEST_KEY, "layer=0/q", (64, 64)).numpy().tobytes()).hexdigest()[:16]
