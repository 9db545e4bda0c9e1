"""How long-running stages report progress: a callable that takes one human line (or None for silence).

The CLI passes a function that writes to stderr; the Python API's default is silence.
"""

from __future__ import annotations

from collections.abc import Callable

#: One human line per step; None: say nothing.
Progress = Callable[[str], None] | None


def reporter(progress: Progress) -> Callable[[str], None]:
    """A callable that always works: `progress` itself, or one that drops every line."""
    return progress if progress is not None else _silent


def _silent(_line: str) -> None:
    return None
