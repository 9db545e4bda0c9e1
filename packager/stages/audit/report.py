"""What an audit reports (docs/INTERFACE.md `audit`), and the budget the learning attack is held to.

Kept apart from the audit itself so the CLI, the release pipeline and the card can read a report
without importing the attacks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from packager.limits import check, check_each
from packager.stages.audit.scoring import TOLERANCE


@dataclass(frozen=True)
class LearningBudget:
    """The compute the `learning` attack may spend: its stated budget, reported with its result."""

    steps: int = 300
    tokens: int = 2048
    layers: tuple[int, ...] | None = None  # MLP units attacked; None: the middle one
    lr: float = 3e-3
    seed: int = 0
    sample_length: int | None = None  # caps the sequences the attacker samples from the release (None: 256)

    def validate(self) -> None:
        """Raise UsageError for a budget out of range (`--learning-steps`, `--attacker-tokens`, units)."""
        check("--learning-steps", self.steps)
        check("--attacker-tokens", self.tokens)
        check_each("--learning-units", self.layers)


@dataclass(frozen=True)
class AttackResult:
    """One attack's outcome (docs/INTERFACE.md `audit.attacks[]`), plus diagnostics in `extra`."""

    name: str
    recovered_fraction: float | None
    relative_error: float | None
    seconds: float
    rebuilt_top1: float | None
    rebuilt_compared_with: str  # "source" or "release"
    recovered_fraction_up_to_scale: float | None = None
    units_attacked: int = 0
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The fields, with the attack's diagnostics (`extra`) flattened beside them."""
        data = asdict(self)
        extra = data.pop("extra")
        return {**data, **extra}


@dataclass(frozen=True)
class AuditReport:
    """What `unswift audit` found (docs/INTERFACE.md `audit`)."""

    protected_param_fraction: float | None
    attacks: list[AttackResult]
    leaks: list[dict] | None
    reference: str | None
    heldout_tokens: int
    release_top1: float | None = None  # the release itself against the source, on the same tokens
    tolerance: float = TOLERANCE
    notes: list[str] = field(default_factory=list)
    hardware: str | None = None  # what the attacks' `seconds` were measured on (the CPU model and cores)

    def to_json(self) -> dict:
        return {
            "protected_param_fraction": self.protected_param_fraction,
            "attacks": [attack.to_json() for attack in self.attacks],
            "leaks": self.leaks,
            "reference": self.reference,
            "heldout_tokens": self.heldout_tokens,
            "release_top1": self.release_top1,
            "tolerance": self.tolerance,
            "notes": self.notes,
            "hardware": self.hardware,
        }

    def max_recovered(self) -> float | None:
        """The largest recovered fraction of any attack; None when none was scored (no reference)."""
        values = [a.recovered_fraction for a in self.attacks if a.recovered_fraction is not None]
        return max(values) if values else None
