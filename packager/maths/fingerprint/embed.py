"""Add one recipient's fingerprint to source tensors, one tensor at a time.

Runs before the TaylorMLP transform: the series is fitted to the fingerprinted MLP, so whatever
rebuilds plain weights from the release recovers the fingerprinted ones, and attention carries the
pattern as released. A pattern depends only on (recipient key, role, profile): never on the order
tensors arrive in, on the file layout, or on other tensors, so a converter that streams one tensor at
a time holds one tensor and its pattern.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from packager.maths.fingerprint.profile import Profile, delta
from packager.maths.fingerprint.roles import Dims, parts


def fingerprint_tensor(name: str, tensor: torch.Tensor, key: bytes, profile: Profile, dims: Dims) -> torch.Tensor:
    """`tensor` with every role it holds perturbed by the recipient's pattern: a new float32 tensor
    (float64 stays float64); a tensor that holds no role is returned as it is.

    The result is float32 whatever the source's dtype: a pattern of ~1e-3 of a weight is far below a
    half-precision rounding step, and adding it to a bfloat16 weight and rounding back would erase it.
    Whoever writes the tensor decides its dtype (and convert refuses a half-precision release of a
    half-precision source, see `packager.stages.fingerprint`).

    Raises:
        KeyError: the profile has no shape, or a shape of another size, for a role the tensor holds.
    """
    found = parts(name, tuple(tensor.shape), dims)
    if not found:
        return tensor
    out = tensor.to(torch.float64 if tensor.dtype == torch.float64 else torch.float32, copy=True)
    for part in found:
        shape = profile.get(part.role.key)
        if shape is None:
            raise KeyError(f"{name}: the fingerprint profile has no shape for {part.role.key}")
        if (shape.row.numel(), shape.col.numel()) != part.shape:
            raise KeyError(f"{name}: the profile's shape for {part.role.key} is "
                           f"{(shape.row.numel(), shape.col.numel())}, the tensor holds {part.shape}")
        part.add_(out, delta(key, part.role.key, shape))
    return out


def fingerprint_tensors(tensors: Iterable[tuple[str, torch.Tensor]], key: bytes, profile: Profile, dims: Dims
                        ) -> Iterator[tuple[str, torch.Tensor]]:
    """Streaming form: every (name, tensor) passed through `fingerprint_tensor`."""
    for name, tensor in tensors:
        yield name, fingerprint_tensor(name, tensor, key, profile, dims)


def fingerprint_state(state: dict[str, torch.Tensor], key: bytes, profile: Profile, dims: Dims
                      ) -> dict[str, torch.Tensor]:
    """A whole state dict fingerprinted; every role of the profile must be present exactly once.

    Raises:
        KeyError: a role of the profile is absent from `state`.
    """
    out = dict(fingerprint_tensors(state.items(), key, profile, dims))
    seen = {p.role.key for name, t in state.items() for p in parts(name, tuple(t.shape), dims)}
    missing = set(profile) - seen
    if missing:
        raise KeyError(f"profile roles absent from the state dict: {sorted(missing)[:5]}")
    return out
