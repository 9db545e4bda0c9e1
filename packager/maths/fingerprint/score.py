"""Score recipients against an aligned suspect: a matched filter whose null distribution is exact.

Per role, the aligned residual R = suspect − source (source coordinates) is turned once into a filter
matrix C = R ⊙ S / σ̂² (S the pattern's profile, σ̂² a robust per-row estimate of the noise variance in R),
and every recipient r gets

    z_r = <C, G_r> / ‖C‖,     G_r = that recipient's raw N(0, 1) pattern (pattern.raw_pattern).

Null model. A recipient whose key did not make the suspect has G_r independent of everything the
trace computes from the suspect and the source (alignment, R, σ̂², C never see any pattern). Given C,
<C, G_r> is then exactly N(0, ‖C‖²), whatever quantisation, fine-tuning, pruning or other recipients'
patterns put into R. So z_r ~ N(0, 1) exactly, p_r = Φ̄(z_r) one-sided, and the z of different
recipients are independent given C (independent patterns), which makes the Šidák correction exact:

    p_corrected = 1 − (1 − p)^M,   M = the number of recipients in the ledger.

No noise level is estimated for the null: σ̂² only decides how entries are weighted (power), never
what a z means. A recipient is identified when p_corrected ≤ 1e-9; every recipient that passes is
reported (colluders each pass on their own share of the pattern, and an innocent one passes with
probability ≤ 1e-9 in all, family-wise).

The one assumption: patterns of different keys behave as independent Gaussian noise (HMAC-SHA256 key
derivation and Mersenne Twister streams). The benchmarks check it on ≥ 1,000 non-recipient keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from packager.maths.fingerprint.keys import raw_pattern
from packager.maths.fingerprint.profile import Shape

THRESHOLD = 1e-9
#: Noise is estimated per row (None) or per block of this many consecutive inputs of a row. Rows: on
#: the demo model (prototype measurement), 32-input blocks (one GGUF quantisation group) lost up to 6x
#: of z after 4-bit quantisation, because in a group with an outlier most entries fall in the
#: quantiser's dead zone (small residual *and* no pattern) and a block estimate weights exactly those most.
BLOCK: int | None = None
#: Entries whose squared residual exceeds this many times their block's noise are down-weighted as
#: 1/R² (pruned weights, outliers): robust weighting, still exact under the null.
CLIP = 9.0
_MEDIAN_CHI2_1 = 0.45493642311957283  # median of χ²₁: turns a median of R² into a variance


def filter_matrix(residual: torch.Tensor, shape: Shape, block: int | None = BLOCK, clip: float = CLIP
                  ) -> torch.Tensor:
    """C = R ⊙ S / max(σ̂², R²/clip), σ̂² per row (or block), float32; zero where R and σ̂² are both zero."""
    r = residual.double()
    rows, cols = r.shape
    block = cols if block is None else block
    pad = (-cols) % block
    sq = torch.nn.functional.pad(r * r, (0, pad), value=float("nan")).reshape(rows, -1, block)
    noise = sq.nanmedian(-1).values / _MEDIAN_CHI2_1  # [rows, blocks]
    noise = noise.repeat_interleave(block, 1)[:, :cols]
    denom = torch.maximum(noise, r * r / clip)
    c = torch.where(denom > 0, r * shape.matrix().double() / denom.clamp_min(1e-300), 0.0)
    return c.float()


def log10_normal_tail(z: float) -> float:
    """log10 Φ̄(z), accurate far in the tail."""
    return float(torch.special.log_ndtr(torch.tensor(-z, dtype=torch.float64))) / math.log(10)


def log10_sidak(log10_p: float, m: int) -> float:
    """log10 of 1 − (1 − p)^m."""
    p = 10.0 ** log10_p
    if p > 1e-300:
        pc = -math.expm1(m * math.log1p(-p)) if p < 1 else 1.0
        if pc > 0:
            return math.log10(pc)
    return math.log10(m) + log10_p


@dataclass
class RecipientScore:
    name: str
    z: float
    log10_p: float
    log10_p_corrected: float

    @property
    def p_corrected(self) -> float:
        """The corrected p-value (0.0 where it underflows a float: see `log10_p_corrected`)."""
        return 10.0 ** self.log10_p_corrected if self.log10_p_corrected > -300 else 0.0


@dataclass
class Scorer:
    """Accumulates <C, G_r> per recipient and ‖C‖², one role at a time (bounded memory)."""

    keys: dict[str, bytes]  # recipient -> recipient_key
    numerators: dict[str, float] = field(default_factory=dict)
    norm2: float = 0.0
    entries: int = 0

    def add(self, role: str, c: torch.Tensor) -> None:
        """Add one role's filter matrix C (float32)."""
        self.norm2 += float(c.double().pow(2).sum())
        self.entries += c.numel()
        shape = (c.shape[0], c.shape[1])
        flat = c.flatten()
        for name, key in self.keys.items():
            g = raw_pattern(key, role, shape).flatten()
            self.numerators[name] = self.numerators.get(name, 0.0) + float(torch.dot(flat, g).double())

    def scores(self) -> list[RecipientScore]:
        """Every recipient's z and p-values, highest z first (z = 0 when the residual is all zero)."""
        m = len(self.keys)
        out = []
        for name in self.keys:
            z = self.numerators.get(name, 0.0) / math.sqrt(self.norm2) if self.norm2 > 0 else 0.0
            lp = log10_normal_tail(z)
            out.append(RecipientScore(name, z, lp, log10_sidak(lp, m)))
        return sorted(out, key=lambda s: -s.z)


def identified(scores: list[RecipientScore], threshold: float = THRESHOLD) -> list[str]:
    """Every recipient at corrected p ≤ threshold, strongest first."""
    return [s.name for s in scores if s.log10_p_corrected <= math.log10(threshold)]


#: The aligned suspect keeps at least this cosine with the source (median over roles) to count as
#: derived from it. Unrelated models of the same architecture measure near 0, quantised or fine-tuned
#: copies near 1 (docs/BENCHMARKS.md).
DERIVED_MIN_COSINE = 0.5


def derived_from_reference(cosines: dict[str, float]) -> tuple[bool, float]:
    """(decision, score): the median over roles of the cosine between aligned suspect and source."""
    values = torch.tensor(list(cosines.values()), dtype=torch.float64)
    score = float(values.median()) if values.numel() else 0.0
    return score >= DERIVED_MIN_COSINE, score
