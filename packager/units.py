"""Sizes as people read them: decimal units (kB, MB, GB, TB) everywhere unswift prints a size.

One convention for the CLI (`--dry-run`, convert's messages), the model card and the docs: 1 GB is
10^9 bytes, as disk makers and the Hugging Face Hub count. Binary units (`1.5GiB`) are still accepted
as input to `--max-shard-size`, never printed.
"""

from __future__ import annotations

import re

from packager.errors import UsageError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_FACTORS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
            "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}
_STEPS = (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("kB", 1000))


def parse_size(value: str | int, *, flag: str = "--max-shard-size") -> int:
    """Bytes from '2GB', '500MB', '1.5GiB' or a plain number of bytes.

    Raises:
        UsageError: not a size.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise UsageError(f"{flag} '{value}' is not a size; write e.g. 2GB, 500MB or 1GiB")
    unit = (match.group(2) or "").lower().removesuffix("b")
    return int(float(match.group(1)) * _FACTORS[unit])


def format_size(count: int | float) -> str:
    """A byte count in decimal units with two decimals: '984.28 MB', '1.23 GB', '512 bytes'."""
    for unit, factor in _STEPS:
        if count >= factor:
            return f"{count / factor:.2f} {unit}"
    return f"{int(count)} bytes"
