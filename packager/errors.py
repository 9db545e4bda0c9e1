"""The one exception family users can cause, and the exit code each maps to.

Anything else that escapes a command is a bug and keeps its traceback.
"""

from __future__ import annotations


class UnswiftError(Exception):
    """An error the user can fix; the CLI prints it on one line (plus the hint) and exits with `exit_code`.

    Example message: ``output folder 'releases/x' exists; pass --overwrite to replace it``.
    """

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        #: Extra JSON fields a command reports beside the error (e.g. `bad_files` of a failed verify).
        self.details = details or {}

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(UnswiftError):
    """Bad input or usage: a missing folder, an unsupported architecture, an invalid option (exit 2)."""

    exit_code = 2


class CheckFailed(UnswiftError):
    """A check ran and did not pass: a signature mismatch, a threshold not met (exit 1)."""

    exit_code = 1


class HubError(UnswiftError):
    """A network or Hub failure that retrying may fix (exit 3)."""

    exit_code = 3
