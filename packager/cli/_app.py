"""The click group every command module attaches to, and the shared output conventions.

docs/INTERFACE.md: human output on stderr; `--json` prints exactly one JSON object on one stdout line, also
on failure; exit codes 0 / 1 (check failed) / 2 (bad input) / 3 (network, retry may help).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import click

from packager import __version__
from packager.api import UnswiftError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="unswift")
def main() -> None:
    """unswift: release an LLM checkpoint as a TaylorMLP ("Taylor Unswift") artifact.

    \b
    Publish in one step:
      unswift release ./my-checkpoint --repo org/model --key publisher.pem
    Or stage by stage:
      unswift calibrate ./ckpt --out stats.safetensors
      unswift convert ./ckpt --out releases/model --stats stats.safetensors
      unswift eval releases/model --reference ./ckpt
      unswift sign releases/model --key publisher.pem
      unswift push releases/model --repo org/model
    """


def common_options(func: Callable) -> Callable:
    """Add --json, --quiet and --debug, which every command accepts."""
    func = click.option("--debug", is_flag=True, help="Show tracebacks of user errors too.")(func)
    func = click.option("--quiet", "-q", is_flag=True, help="No progress or messages on stderr.")(func)
    func = click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON object on one stdout line, also on failure."
    )(func)
    return func


@dataclass
class Report:
    """What a command says: JSON fields for stdout and human lines for stderr."""

    command: str
    as_json: bool = False
    quiet: bool = False
    fields: dict[str, Any] = field(default_factory=dict)

    def say(self, message: str) -> None:
        """One human line on stderr (silent with --quiet)."""
        if not self.quiet:
            click.echo(message, err=True)

    def update(self, values: dict[str, Any]) -> None:
        self.fields.update(values)

    @property
    def show_progress(self) -> bool:
        """Progress bars only for a person watching: not with --quiet and not when stderr is no TTY."""
        return not self.quiet and sys.stderr.isatty()


def _emit_json(payload: dict[str, Any]) -> None:
    click.echo(json.dumps(payload, default=str, separators=(",", ":")))


@contextlib.contextmanager
def reporting(command: str, *, as_json: bool, quiet: bool, debug: bool) -> Iterator[Report]:
    """Run a command body, turning `UnswiftError` into its exit code, one line and the JSON object.

    Errors that are not `UnswiftError` are bugs: they propagate with their traceback (and a JSON line).
    """
    report = Report(command, as_json=as_json, quiet=quiet)
    try:
        yield report
    except UnswiftError as err:
        report.fields.update(err.details)
        if as_json:
            _emit_json({"command": command, "ok": False, "error": str(err), **report.fields})
        click.echo(f"error: {err.message}", err=True)
        if err.hint:
            click.echo(f"hint: {err.hint}", err=True)
        if debug:
            raise
        sys.exit(err.exit_code)
    except Exception as err:  # a bug: keep the traceback, but keep the --json promise too
        if as_json:
            _emit_json({"command": command, "ok": False, "error": f"internal error: {err!r}"})
        raise
    if as_json:
        _emit_json({"command": command, "ok": True, **report.fields})
