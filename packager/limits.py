"""The accepted range of every numeric option, checked before any work starts.

One table serves the command line and the Python API: the stage functions (and `packager.api`, before
it opens a checkpoint) call `check`, and the CLI attaches the same check to each option so a bad value
fails while the arguments are parsed. A value outside its range is a `UsageError` (exit 2) with one
line naming the option, the value and the range: `--eval-tokens -5` must not run for minutes, and
`--batch 1000000000` must not exhaust memory halfway through a load. The upper bounds are far above any
sensible use; they catch typos and overflow, not ambition.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from packager.errors import UsageError


@dataclass(frozen=True)
class Limit:
    """A closed range [low, high] (or (low, high] with `low_open`), of whole numbers unless `integer=False`."""

    low: float
    high: float
    integer: bool = True
    low_open: bool = False
    what: str = ""
    shown: str = ""  # the range in words, instead of the numbers (e.g. for a size)

    def contains(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high

    def describe(self) -> str:
        if self.shown:
            return self.shown
        if self.integer:
            text = f"a whole number from {self.low:,} to {self.high:,}"
        else:
            text = f"a number in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        return f"{text} ({self.what})" if self.what else text


SEED_MAX = 2**63 - 1
TOKENS_MAX = 100_000_000

#: Every numeric option of every command, by its flag. A new numeric option needs an entry here (a test
#: introspects the CLI and fails for a numeric option without one).
LIMITS: dict[str, Limit] = {
    "--order": Limit(1, 128, what="the series order"),
    "--slowdown": Limit(1.0, 64.0, integer=False, low_open=True, what="the decode slowdown wanted, e.g. 4"),
    "--coverage": Limit(0.0, 1.0, integer=False, low_open=True, what="a share of MLP channels, or auto"),
    "--min-top1": Limit(0.0, 1.0, integer=False, low_open=True, what="a share of tokens"),
    "--max-kl": Limit(0.0, 100.0, integer=False, what="nats per token"),
    "--max-recovered": Limit(0.0, 1.0, integer=False, what="a share of the protected weights"),
    "--calibration-tokens": Limit(32, TOKENS_MAX, what="tokens of calibration text"),
    "--eval-tokens": Limit(16, TOKENS_MAX, what="tokens of eval text"),
    "--attacker-tokens": Limit(16, TOKENS_MAX, what="tokens of the attacker's text"),
    "--calibration-seed": Limit(0, SEED_MAX, what="a seed"),
    "--seed": Limit(0, SEED_MAX, what="a seed"),
    "--batch": Limit(1, 4096, what="sequences per step"),
    "--context": Limit(1, 1_048_576, what="tokens in the KV cache"),
    "--steps": Limit(1, 1_000_000, what="timed decode steps"),
    "--prefill-tokens": Limit(1, 1_048_576, what="tokens per prefill"),
    "--learning-steps": Limit(1, 1_000_000, what="Adam steps per attacked MLP"),
    "--learning-units": Limit(0, 1_000_000, what="MLP unit numbers, counted from 0"),
    "--max-shard-size": Limit(1000, 10**12, shown="a size from 1kB to 1TB, e.g. 2GB"),
}


def check(flag: str, value, *, limit: Limit | None = None):
    """Return `value` if it lies in the range of `flag` (None passes: the default applies); else UsageError.

    Args:
        flag: the option, as the command line spells it (`--eval-tokens`); its range is `LIMITS[flag]`.
        value: the number given.
        limit: a range other than the table's (for a parameter the CLI does not expose).

    Raises:
        UsageError: not a number of the right kind, not finite, or out of range.
        KeyError: `flag` has no range in the table (a programming error).
    """
    if value is None:
        return None
    limit = limit or LIMITS[flag]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{flag} {value!r} is not a number: pass {limit.describe()}")
    if limit.integer and not isinstance(value, int):
        if not (isinstance(value, float) and value.is_integer()):
            raise UsageError(f"{flag} {value!r} is not a whole number: pass {limit.describe()}")
        value = int(value)
    if not math.isfinite(value) or not limit.contains(value):
        raise UsageError(f"{flag} {value} is out of range: pass {limit.describe()}")
    return value


def check_each(flag: str, values: Iterable | None) -> tuple | None:
    """`check` for a repeated option (`--batch 1 --batch 8`) or a list (`--learning-units 0,15`)."""
    if values is None:
        return None
    return tuple(check(flag, value) for value in values)
