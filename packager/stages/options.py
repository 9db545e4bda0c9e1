"""The convert options: every choice that changes a byte of a release, validated before any work starts.

The same frozen value reaches planning, conversion, the release record and the resume check of
`unswift release`, so a release records exactly what it was made with.
"""

from __future__ import annotations

from dataclasses import dataclass

from packager.dtypes import RUNTIME_NAMES
from packager.errors import UsageError
from packager.maths.transform import FITS, Hardening

DEFAULT_SHARD_BYTES = 2 * 1024**3
ALLOCATIONS = ("boost", "uniform")
#: Highest series order accepted: `--slowdown` needs high orders to reach large slowdowns on small models.
MAX_ORDER = 128
#: `--slowdown` accepts (1, MAX_SLOWDOWN].
MAX_SLOWDOWN = 64.0


@dataclass(frozen=True)
class ConvertOptions:
    """Every option that changes a byte of the release (recorded in config.json["unswift"]).

    `slowdown` (when set) asks for that decode slowdown: order and coverage are then chosen by
    `packager.stages.plan.slowdown`, and `order`/`coverage` hold the choice once it is made.
    """

    order: int = 8
    coverage: float | None = None  # None: auto
    slowdown: float | None = None  # None: order and coverage as given
    fit: str = "weighted"
    allocation: str = "boost"  # "boost": per-channel orders N-1 / 2N at the bytes of order N (weighted fit)
    hardening: bool = True
    dtype: str | None = None  # None: the source's
    min_top1: float = 0.995
    license: str | None = None
    base_model: str | None = None
    max_shard_bytes: int = DEFAULT_SHARD_BYTES

    def validate(self) -> None:
        """Raise UsageError for an impossible option before any work is done."""
        if not isinstance(self.order, int) or self.order < 1:
            raise UsageError(f"--order {self.order} is invalid: the series needs order >= 1")
        if self.order > MAX_ORDER:
            raise UsageError(f"--order {self.order} is too large: use at most {MAX_ORDER}")
        if self.slowdown is not None and not (1.0 < self.slowdown <= MAX_SLOWDOWN):
            raise UsageError(f"--slowdown {self.slowdown} is outside (1, {MAX_SLOWDOWN:g}]: pass the decode "
                             "slowdown wanted, e.g. --slowdown 4")
        if self.max_shard_bytes < 1:
            raise UsageError(f"--max-shard-size {self.max_shard_bytes} is invalid: pass a size such as 1GB")
        if self.coverage is not None and not (0.0 < self.coverage <= 1.0):
            raise UsageError(
                f"--coverage {self.coverage} is outside (0, 1]: pass a fraction such as 0.7, or auto")
        if self.fit not in FITS:
            raise UsageError(f"--fit {self.fit!r} is unknown; choose one of {', '.join(FITS)}")
        if self.allocation not in ALLOCATIONS:
            raise UsageError(f"--allocation {self.allocation!r} is unknown; choose one of {', '.join(ALLOCATIONS)}")
        if self.dtype is not None and self.dtype not in RUNTIME_NAMES:
            raise UsageError(f"--dtype {self.dtype!r} is unknown; choose one of {', '.join(RUNTIME_NAMES)}")
        if not (0.0 < self.min_top1 <= 1.0):
            raise UsageError(f"--min-top1 {self.min_top1} is outside (0, 1]")

    @property
    def hardening_scheme(self) -> Hardening:
        return Hardening() if self.hardening else Hardening.paper()
