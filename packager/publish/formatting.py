"""How the model card writes a recorded value: percentages, counts, ratios, durations, sizes, text sources.

Kept apart from the card's wording so that every figure is formatted one way wherever it appears. A
missing measurement is written "not measured", never as a number. Percentages get as many decimals as
it takes not to round 0.99996 up to 100 % or 3e-5 down to 0 %, which would claim more than was measured.
Sizes use decimal units (MB, GB), as the command line does (`packager.units`). Recorded identifiers
(`self-sampled:eval:seed=1000`) are put in words for readers of the card.
"""

from __future__ import annotations

import re
from typing import Any

from packager.units import format_size

NOT_MEASURED = "not measured"


def percent(value: float | None) -> str:
    """A fraction as a percentage, with enough decimals never to round 0.99996 up to 100 or 3e-5 to 0."""
    if value is None:
        return NOT_MEASURED
    for digits in range(2, 8):
        text = f"{value * 100:.{digits}f}"
        if not ((value < 1 and float(text) >= 100) or (value > 0 and float(text) == 0)):
            break
    return f"{text} %"


def number(value: float | int | None) -> str:
    """An integer with thousands separators, any other number to four significant digits."""
    if value is None:
        return NOT_MEASURED
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:.4g}"


def times(value: float | None) -> str:
    """A ratio such as a slowdown, e.g. ``2.37×``."""
    return NOT_MEASURED if value is None else f"{value:.2f}×"


def seconds(value: float | None) -> str:
    """A duration: whole seconds from 100 s up, three significant digits below."""
    if value is None:
        return NOT_MEASURED
    return f"{value:.0f} s" if value >= 100 else f"{value:.3g} s"


def byte_size(count: int) -> str:
    """A size in decimal units (`984.28 MB`, `1.23 GB`), as every size unswift prints."""
    return format_size(count)


_SAMPLED = re.compile(r"^self-sampled(?::(?P<kind>[\w-]+))?(?::seed=(?P<seed>-?\d+))?$")


def text_source(source: str | None) -> str:
    """A recorded text source in words: `self-sampled:eval:seed=1000` -> "text sampled from the source
    model (seed 1000)", `file:corpus.jsonl` -> "text from `corpus.jsonl`"."""
    if not source:
        return "text of an unrecorded source"
    sampled = _SAMPLED.match(source)
    if sampled:
        seed = sampled.group("seed")
        return "text sampled from the source model" + (f" (seed {seed})" if seed is not None else "")
    if source.startswith("file:"):
        return f"text from `{source.removeprefix('file:')}`"
    return f"text from `{source}`"


def measured_on(section: dict[str, Any]) -> str:
    """Where a measurement ran: "<hardware>, <device>, <dtype>" (an older record without hardware says so)."""
    hardware = section.get("hardware") or "unrecorded hardware"
    parts = [hardware] + [str(section[key]) for key in ("device", "dtype") if section.get(key)]
    return ", ".join(parts)
