"""How much measuring a release spends: the full-size figures, or a quick preview of the same pipeline.

A release is measured five times over (calibration text, eval, noise floor and greedy continuations,
bench, the audit's attacks). At full size that takes minutes even on a 135M model, which is right for a
release that goes public and wrong for someone who wants to see the pipeline once. The quick budget
runs every stage with every measurement, on smaller samples, and the record and the card say so, so a
figure is never read without the sample it came from. Options given explicitly (`--eval-tokens`,
`--calibration-tokens`) win over the budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Budget:
    """The sample sizes of one release's measurements (each in the unit its stage counts)."""

    name: str
    calibration_tokens: int  # self-sampled or read text the series is fitted on
    eval_tokens: int  # teacher-forced tokens of the fidelity eval
    greedy_tokens: int  # new tokens of each greedy continuation of the prompt set
    bench_steps: int  # timed decode steps per model and batch
    learning_steps: int  # Adam steps of the audit's learning attack
    attacker_tokens: int  # tokens of the attacker's own text the audit runs through the release
    #: longest sequence of self-sampled text (None: each stage's own length, 256-512 tokens). Sampling on
    #: a CPU costs per decode step, nearly whatever the batch: shorter sequences, more of them per batch.
    sample_length: int | None = None
    #: tokens of held-out text `--coverage auto` measures each candidate coverage on
    selection_tokens: int = 2048

    def to_json(self) -> dict:
        """The record's `budget` section (docs/INTERFACE.md#budgets)."""
        return asdict(self)


#: `full` is what every stage does by default; `quick` is the demo's.
BUDGETS: dict[str, Budget] = {
    "full": Budget("full", calibration_tokens=16384, eval_tokens=8192, greedy_tokens=64, bench_steps=20,
                   learning_steps=300, attacker_tokens=2048),
    "quick": Budget("quick", calibration_tokens=4096, eval_tokens=1024, greedy_tokens=16, bench_steps=8,
                    learning_steps=60, attacker_tokens=256, sample_length=128, selection_tokens=1024),
}
DEFAULT_BUDGET = "full"


def budget_named(name: str) -> Budget:
    """The budget called `name`; UsageError naming the choices otherwise."""
    from packager.errors import UsageError

    if name not in BUDGETS:
        raise UsageError(f"unknown budget '{name}'; choose one of {', '.join(BUDGETS)}")
    return BUDGETS[name]
