"""How the model card writes a recorded value: percentages, counts, ratios, durations, sizes, YAML blocks.

Kept apart from the card's wording so that every figure is formatted one way wherever it appears. A
missing measurement is written "not measured", never as a number. Percentages get as many decimals as
it takes not to round 0.99996 up to 100 % or 3e-5 down to 0 %, which would claim more than was measured.
"""

from __future__ import annotations

from typing import Any

import yaml

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
    """A size in GiB from 1 GiB up, in MiB below."""
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.2f} MiB"


class _PlainDumper(yaml.SafeDumper):
    """YAML without anchors: a repeated value is written out again, as a reader expects."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def yaml_block(section: dict[str, Any], *, compact: bool = True) -> str:
    """A record section as a YAML block; `compact` puts each leaf mapping or list on one line."""
    flow = None if compact else False
    text = yaml.dump(section, Dumper=_PlainDumper, sort_keys=False, default_flow_style=flow, width=100)
    return text.rstrip()
