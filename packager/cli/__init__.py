"""The `unswift` command line: click commands only, each a thin wrapper over `packager.api`.

Every module in this package that does not start with an underscore attaches its commands to
`main`; importing them here registers them.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys

import click

from packager.cli._app import main as _group


def _register_commands() -> None:
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: click usage errors keep exit code 2 and, with --json, still print JSON."""
    args = sys.argv[1:] if argv is None else argv
    try:
        _group.main(args=args, prog_name="unswift", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        if "--json" in args:
            command = next((a for a in args if not a.startswith("-")), None)
            click.echo(json.dumps({"command": command, "ok": False, "error": err.format_message()}))
        err.show()
        sys.exit(err.exit_code)


cli = _group  # for click.testing.CliRunner
