"""The convert options: every choice that changes a byte of a release, validated before any work starts.

The same frozen value reaches planning, conversion, the release record and the resume check of
`unswift release`, so a release records exactly what it was made with.
"""

from __future__ import annotations

from dataclasses import dataclass

from packager.dtypes import RUNTIME_NAMES
from packager.errors import UsageError
from packager.limits import LIMITS, check
from packager.maths.transform import FITS, Hardening

#: 2 GB (decimal, as every size unswift prints; `--max-shard-size 2GB` is the same).
DEFAULT_SHARD_BYTES = 2 * 1000**3
ALLOCATIONS = ("boost", "uniform")
#: Highest series order accepted: `--slowdown` needs high orders to reach large slowdowns on small models.
MAX_ORDER = int(LIMITS["--order"].high)
#: `--slowdown` accepts (1, MAX_SLOWDOWN].
MAX_SLOWDOWN = LIMITS["--slowdown"].high


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
        check("--order", self.order)
        check("--slowdown", self.slowdown)
        check("--max-shard-size", self.max_shard_bytes)
        check("--coverage", self.coverage)
        if self.fit not in FITS:
            raise UsageError(f"--fit {self.fit!r} is unknown; choose one of {', '.join(FITS)}")
        if self.allocation not in ALLOCATIONS:
            raise UsageError(f"--allocation {self.allocation!r} is unknown; choose one of {', '.join(ALLOCATIONS)}")
        if self.dtype is not None and self.dtype not in RUNTIME_NAMES:
            raise UsageError(f"--dtype {self.dtype!r} is unknown; choose one of {', '.join(RUNTIME_NAMES)}")
        check("--min-top1", self.min_top1)

    @property
    def hardening_scheme(self) -> Hardening:
        return Hardening() if self.hardening else Hardening.paper()
