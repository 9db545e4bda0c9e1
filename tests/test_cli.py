"""The command line as a whole: every command documents itself; usage errors keep the JSON promise."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from packager.cli import cli, main
from packager.cli._options import DEFAULT_TOKENS

COMMANDS = ["release", "calibrate", "convert", "eval", "bench", "audit", "card", "keygen", "sign", "verify",
            "push", "demo-checkpoint"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "--json" in result.output


def test_usage_error_with_json_prints_one_json_line(capsys):
    with pytest.raises(SystemExit) as done:
        main(["convert", "--json", "--order", "not-a-number", "x"])
    assert done.value.code == 2
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1 and json.loads(lines[0])["ok"] is False


def test_cli_default_calibration_tokens_match_the_library():
    from packager.calibrate import DEFAULT_TOKENS as LIBRARY

    assert DEFAULT_TOKENS == LIBRARY
