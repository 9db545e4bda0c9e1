"""Every numeric and device option of every command is checked before any work starts.

The sweep introspects the click commands, so an option added later is covered without editing this file:
a numeric option without a range in `packager.limits.LIMITS` fails here. Each bad value (zero where zero is
out of range, a negative, an absurd value, NaN) must exit 2 with one `error:` line naming the option. A
fresh process then shows that `eval --eval-tokens -5`, `--device tpu9` and the Python API's own checks fail
before any model is loaded.
"""

from __future__ import annotations

import json

import click
import pytest
import torch
from click.testing import CliRunner
from support.processes import run_python

from packager.cli import cli
from packager.limits import LIMITS

#: Options whose values are strings holding numbers (checked like the numeric ones).
NUMERIC_STRINGS = {"--coverage", "--max-shard-size", "--learning-units"}


def _flag(param: click.Parameter) -> str:
    return max(param.opts, key=len)


def _is_numeric(param: click.Parameter) -> bool:
    return isinstance(param.type, click.types.IntParamType | click.types.FloatParamType) or \
        _flag(param) in NUMERIC_STRINGS


def _options(kind) -> list[tuple[str, click.Option]]:
    return [(name, param) for name, command in sorted(cli.commands.items()) for param in command.params
            if isinstance(param, click.Option) and kind(param)]


def _bad_values(flag: str) -> list[str]:
    """Zero when zero is out of range, a negative, an absurd value, and NaN for real numbers."""
    limit = LIMITS[flag]
    values = ["-1", str(int(limit.high) * 1000 + 7)]
    if not limit.contains(0):
        values.append("0")
    if not limit.integer:
        values += ["nan", "inf"]
    if flag == "--max-shard-size":
        values = ["0", "-1", "999", "5000TB"]
    return values


def _required_arguments(command: click.Command) -> list[str]:
    """Placeholder values for the command's required arguments and options (nothing is ever read)."""
    args: list[str] = []
    for param in command.params:
        if isinstance(param, click.Argument):
            args.append("placeholder")
        elif isinstance(param, click.Option) and param.required:
            args += [_flag(param), "org/placeholder"]
    return args


NUMERIC = _options(_is_numeric)
DEVICES = _options(lambda param: param.name == "device")


def test_the_sweep_finds_the_options_it_must_cover():
    found = {flag for _, param in NUMERIC for flag in [_flag(param)]}
    assert {"--eval-tokens", "--batch", "--order", "--coverage", "--max-shard-size", "--learning-units",
            "--seed", "--max-kl", "--max-recovered", "--slowdown"} <= found
    assert {name for name, _ in DEVICES} == {"bench", "calibrate", "eval"}


@pytest.mark.parametrize(("command", "param"), NUMERIC, ids=[f"{c}{_flag(p)}" for c, p in NUMERIC])
def test_every_numeric_option_has_a_range(command, param):
    assert _flag(param) in LIMITS, f"`unswift {command} {_flag(param)}` has no range in packager.limits.LIMITS"


@pytest.mark.parametrize(("command", "param"), NUMERIC, ids=[f"{c}{_flag(p)}" for c, p in NUMERIC])
def test_every_numeric_option_refuses_zero_negative_and_absurd_values(command, param):
    flag = _flag(param)
    base = _required_arguments(cli.commands[command])
    for value in _bad_values(flag):
        result = CliRunner().invoke(cli, [command, *base, f"{flag}={value}"])
        assert result.exit_code == 2, (command, flag, value, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {flag} "), (command, flag, value, result.output)


@pytest.mark.parametrize(("command", "param"), DEVICES, ids=[c for c, _ in DEVICES])
def test_unknown_and_absent_devices_exit_2(command, param):
    base = _required_arguments(cli.commands[command])
    absent = [f"cuda:{torch.cuda.device_count()}"] + ([] if torch.cuda.is_available() else ["cuda"])
    for value in ["tpu9", "gpu", "cuda:x", *absent]:
        result = CliRunner().invoke(cli, [command, *base, "--device", value])
        assert result.exit_code == 2, (command, value, result.output)
        assert result.output.startswith("error: --device") and result.output.count("\n") == 1, result.output


def test_valid_edge_values_pass_the_checks():
    from packager import api

    assert api.check_option("--seed", 0) == 0 and api.check_option("--max-kl", 0.0) == 0.0
    assert api.check_option("--coverage", 1.0) == 1.0 and api.check_option("--order", 128) == 128
    assert api.check_each("--learning-units", (0, 15)) == (0, 15)
    assert api.check_device("cpu") == "cpu" and api.check_device("auto", allow_auto=True) == "auto"
    with pytest.raises(api.UsageError, match="whole number"):
        api.check_option("--eval-tokens", 2.5)
    with pytest.raises(api.UsageError, match="not a number"):
        api.check_option("--batch", True)


FRESH = r"""
import json, sys
from packager.cli import main
from packager import api
from packager.stages.audit import LearningBudget
from packager.stages.options import ConvertOptions

release, reference, scratch = sys.argv[1], sys.argv[2], sys.argv[3]
codes = {}
for name, args in {
    "eval_tokens": ["eval", release, "--reference", reference, "--eval-tokens", "-5"],
    "eval_device": ["eval", release, "--reference", reference, "--device", "tpu9"],
    "bench_device": ["bench", release, "--reference", reference, "--device", "tpu9"],
    "calibrate_seed": ["calibrate", reference, "--out", scratch + "/x.safetensors", "--calibration-seed", "-1"],
}.items():
    try:
        main(args)
    except SystemExit as done:
        codes[name] = done.code
calls = {
    "api_eval": lambda: api.evaluate(release, reference, tokens=-5),
    "api_eval_device": lambda: api.evaluate(release, reference, device="tpu9"),
    "api_bench": lambda: api.bench(release, reference, batches=(0,)),
    "api_calibrate": lambda: api.calibrate(reference, tokens=0),
    "api_convert": lambda: api.convert(reference, scratch + "/out", options=ConvertOptions(order=0)),
    "api_convert_tokens": lambda: api.convert(reference, scratch + "/out", calibration_tokens=-1),
    "api_audit": lambda: api.audit(release, reference=reference, learning=LearningBudget(steps=0)),
    "api_release": lambda: api.release(reference, out=scratch + "/out", eval_tokens=0),
    "api_plan": lambda: api.plan(reference, ConvertOptions(coverage=1.5)),
}
for name, call in calls.items():
    try:
        call()
        codes[name] = "no error"
    except api.UsageError as err:
        codes[name] = err.exit_code
loaded = sorted(name for name in sys.modules if name.startswith("transformers.models.") and "modeling" in name)
print(json.dumps({"codes": codes, "modeling_modules": loaded}))
"""


def test_bad_options_fail_before_any_model_is_loaded(tiny_llama, tiny_release, tmp_path):
    done = run_python(FRESH, str(tiny_release), str(tiny_llama), str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["codes"] and set(report["codes"].values()) == {2}, report["codes"]
    assert report["modeling_modules"] == []  # no model class was even imported
    assert "Traceback" not in done.stderr and list(tmp_path.iterdir()) == []


def test_the_interface_lists_every_range():
    from pathlib import Path

    text = Path(__file__).resolve().parents[2].joinpath("docs", "INTERFACE.md").read_text()
    table = text.split('<a id="option-ranges"></a>', 1)[1].split("<a id=", 1)[0]
    for flag, limit in LIMITS.items():
        row = next((line for line in table.splitlines() if f"`{flag}`" in line), None)
        assert row is not None, f"docs/INTERFACE.md#option-ranges does not list {flag}"
        if limit.integer and flag not in ("--max-shard-size", "--seed", "--calibration-seed"):
            assert f"{int(limit.low):,} to {int(limit.high):,}" in row, (flag, row)
