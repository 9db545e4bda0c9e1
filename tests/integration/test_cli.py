"""The command line as a whole: every command documents itself; usage errors keep the JSON promise."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from packager.cli import cli, main
from packager.cli._options import DEFAULT_TOKENS

COMMANDS = ["release", "calibrate", "convert", "eval", "bench", "audit", "trace", "card", "keygen", "sign", "verify",
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
    from packager.stages.calibrate import DEFAULT_TOKENS as LIBRARY

    assert DEFAULT_TOKENS == LIBRARY


def test_calibrate_replaces_its_statistics_file_only_with_overwrite(tiny_llama, tmp_path):
    stats = tmp_path / "stats.safetensors"
    args = ["calibrate", str(tiny_llama), "--out", str(stats), "--calibration-tokens", "128", "--json"]
    assert CliRunner().invoke(cli, args).exit_code == 0 and stats.is_file()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "exists; pass --overwrite" in again.stdout
    assert CliRunner().invoke(cli, [*args, "--overwrite"]).exit_code == 0
    folder = tmp_path / "a-folder"
    folder.mkdir()
    wrong = CliRunner().invoke(cli, [*args[:3], str(folder), *args[4:], "--overwrite"])
    assert wrong.exit_code == 2 and "is not a file" in wrong.stdout
