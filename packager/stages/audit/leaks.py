"""The leak scan and `protected_param_fraction`: hashes of every row and column of a release.

Every row and column of every released floating tensor is hashed (sign-canonicalised: first nonzero
element positive) into one index, so a single pass over the files finds exact copies, sign flips and
permuted copies of source vectors. Scaled copies are what the attacks measure, not this scan.

- The leak scan looks up every source vector the release declares protected (`declared_protected`).
- `protected_param_fraction` looks up every row and column of every source tensor: an element is
  unprotected if its row or its column appears in the release as it is (up to sign and permutation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from packager.formats.release import ReleaseFiles

if TYPE_CHECKING:  # types only: importing them pulls in transformers
    from packager.formats.checkpoint import Checkpoint
    from packager.maths.transform import SourceMLP

#: At most this many source vectors are named per leaking tensor.
LEAK_EXAMPLES = 20

_HASH_LENGTH = 1 << 17
#: Integer views of float dtypes: vectors are hashed by their bits, so equal means bit-equal.
_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
             torch.float64: torch.int64}

Place = tuple[str, str, int]  # (released tensor, "row" or "column", position)


def _hash_weights() -> tuple[torch.Tensor, torch.Tensor]:
    """Two fixed random weight vectors: a 128-bit key is the pair of weighted sums of a vector's bits."""
    generator = torch.Generator().manual_seed(0x756E7377)
    draw = lambda: torch.randint(-(2**62), 2**62, (_HASH_LENGTH,), generator=generator)  # noqa: E731
    return draw(), draw()


def vector_keys(matrix: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]
                ) -> list[tuple[int, int, int]]:
    """A 128-bit key per row of `matrix`, equal for rows equal up to sign (first nonzero made positive)."""
    matrix = matrix + 0.0  # -0.0 becomes 0.0
    rows, length = matrix.shape
    if length > _HASH_LENGTH:
        raise ValueError(f"vectors longer than {_HASH_LENGTH} are not hashed")
    nonzero = matrix != 0
    first = nonzero.to(torch.int8).argmax(-1)
    sign = torch.sign(matrix.gather(-1, first.unsqueeze(-1)))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    canonical = (matrix * sign).contiguous()
    bits = canonical.view(_INT_VIEW[canonical.dtype]).long()
    keys = []
    for part in torch.split(bits, max(1, (1 << 22) // max(length, 1))):
        h1 = (part * weights[0][:length]).sum(-1).tolist()
        h2 = (part * weights[1][:length]).sum(-1).tolist()
        keys.extend(zip([length] * len(h1), h1, h2, strict=True))
    return keys


def _as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dim() == 0:
        return tensor.reshape(1, 1)
    if tensor.dim() == 1:
        return tensor.unsqueeze(0)
    return tensor.reshape(-1, tensor.shape[-1]) if tensor.dim() > 2 else tensor


class ReleaseIndex:
    """Where every row and column of every released floating tensor sits, by key."""

    def __init__(self, release: ReleaseFiles) -> None:
        self.weights = _hash_weights()
        self.dtype: torch.dtype | None = None
        self.where: dict[tuple[int, int, int], Place] = {}
        for key in sorted(release.key_to_file):
            tensor = release.tensor(key)
            if not tensor.is_floating_point():
                continue
            self.dtype = self.dtype or tensor.dtype
            matrix = _as_matrix(tensor)
            for axis, vectors in (("row", matrix), ("column", matrix.T)):
                if axis == "column" and tensor.dim() < 2:
                    continue
                for position, vector_key in enumerate(vector_keys(vectors, self.weights)):
                    self.where.setdefault(vector_key, (key, axis, position))

    def lookup(self, vectors: torch.Tensor) -> list[Place | None]:
        """For each row of `vectors` (cast to the release dtype), where it appears in the release."""
        vectors = vectors.to(self.dtype or vectors.dtype)
        zero = (vectors == 0).all(-1).tolist()
        keys = vector_keys(vectors, self.weights)
        return [None if is_zero else self.where.get(k) for k, is_zero in zip(keys, zero, strict=True)]


def protected_param_fraction(index: ReleaseIndex, checkpoint: Checkpoint) -> tuple[float, int, int]:
    """(fraction, protected, total) over every floating tensor of the source checkpoint."""
    total = unprotected = 0
    for key in sorted(checkpoint.key_to_file):
        tensor = checkpoint.tensor(key)
        if not tensor.is_floating_point():
            continue
        matrix = _as_matrix(tensor)
        rows, columns = matrix.shape
        total += rows * columns
        row_hit = sum(found is not None for found in index.lookup(matrix))
        col_hit = sum(found is not None for found in index.lookup(matrix.T)) if tensor.dim() >= 2 else 0
        unprotected += row_hit * columns + col_hit * rows - row_hit * col_hit
    return (1.0 - unprotected / total if total else 0.0), total - unprotected, total


def declared_protected(spec: dict) -> dict[str, bool]:
    """Which parts of an expanded channel the release declares hidden (from its recorded hardening).

    The down column always is. A paper release (`--fit taylor --no-hardening`) publishes gate rows up to
    sign and up rows as they are, and says so; any other release normalises gate rows, and a release with
    secret scales also scales up rows.
    """
    hardening = spec.get("hardening", {})
    paper_gate = spec.get("fit") == "taylor" and not hardening.get("normalised_centres", True)
    return {"gate": not paper_gate, "up": bool(hardening.get("scales")) and bool(spec.get("gated")),
            "down": True}


def scan_unit(index: ReleaseIndex, unit: str, source: SourceMLP, protected: torch.Tensor,
              declared: dict[str, bool], found: dict[str, list[str]]) -> None:
    """Record every declared-protected source vector of one unit that appears in the release."""
    parts = [("gate", source.gate, f"{unit}.gate rows", False),
             ("down", source.down, f"{unit}.down columns", True)]
    if source.up is not None:
        parts.append(("up", source.up, f"{unit}.up rows", False))
    for part, tensor, label, columns in parts:
        if not declared[part] or protected.numel() == 0:
            continue
        vectors = tensor.T[protected] if columns else tensor[protected]
        for channel, place in zip(protected.tolist(), index.lookup(vectors), strict=True):
            if place is not None:
                released, axis, position = place
                found.setdefault(released, []).append(f"{label} [{channel}] = released {axis} {position}")


def leak_scan(release: ReleaseFiles, checkpoint: Checkpoint, sources: list[SourceMLP],
              protected: list[torch.Tensor]) -> tuple[float, list[dict]]:
    """(protected_param_fraction, leaks) from one hash index of the release.

    `sources[i]` and `protected[i]` are the source MLP of release unit i and the source channels it
    expanded; each leak names a released tensor, how many source vectors it holds, and a few of them.
    """
    index = ReleaseIndex(release)
    fraction, _, _ = protected_param_fraction(index, checkpoint)
    declared = declared_protected(release.spec)
    found: dict[str, list[str]] = {}
    for i, unit in enumerate(release.units):
        scan_unit(index, unit, sources[i], protected[i], declared, found)
    return fraction, [{"tensor": tensor, "count": len(matches), "matches": matches[:LEAK_EXAMPLES]}
                      for tensor, matches in sorted(found.items())]
