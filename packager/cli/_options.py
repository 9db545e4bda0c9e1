"""Options shared by `convert` and `release`, with one help text each, and the range checks of every option.

The callbacks (`checked`, `checked_device`, ...) run the Python API's own checks (`packager.limits`,
`packager.devices`) while click parses the arguments, so a value out of range fails with one line and
exit 2 before any command body runs; the API checks again for callers that do not come through here.
"""

from __future__ import annotations

from collections.abc import Callable

import click
from click.core import ParameterSource

from packager import api
from packager.api import UsageError

#: Same as packager.stages.calibrate.DEFAULT_TOKENS (a test checks); not imported so `--help` stays fast.
DEFAULT_TOKENS = 16384


class OptionError(click.ClickException):
    """A value out of range, caught while the arguments are parsed: exit 2 with one `error:` line."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _flag(param: click.Parameter) -> str:
    """The option as the command line spells it (its long form)."""
    return max(param.opts, key=len)


def _guarded(check: Callable):
    """A click callback running `check(flag, value)`, its UsageError turned into an `OptionError`."""

    def callback(ctx: click.Context, param: click.Parameter, value):
        if value is None or (param.multiple and not value):
            return value
        try:
            return check(_flag(param), value)
        except UsageError as err:
            raise OptionError(err.message) from None

    return callback


def _number(flag: str, value):
    return api.check_each(flag, value) if isinstance(value, tuple) else api.check_option(flag, value)


def _coverage(flag: str, value: str) -> float | None:
    """`auto` (None) or a share of channels in (0, 1]."""
    if value == "auto":
        return None
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"{flag} '{value}' is not a number or 'auto'") from None
    return api.check_option(flag, number)


def _units(flag: str, value: str) -> tuple[int, ...]:
    """MLP unit numbers from '0,15'."""
    try:
        units = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"{flag} '{value}' is not a list of unit numbers such as 0,15") from None
    return api.check_each(flag, units)


def _size(flag: str, value: str) -> int:
    return api.check_option(flag, api.parse_size(value, flag=flag))


#: Click callbacks: the same range checks as the Python API (`packager.limits`), run at parse time.
checked = _guarded(_number)
checked_device = _guarded(lambda flag, value: api.check_device(value, flag=flag))
checked_device_or_auto = _guarded(lambda flag, value: api.check_device(value, allow_auto=True, flag=flag))
checked_coverage = _guarded(_coverage)
checked_units = _guarded(_units)
checked_size = _guarded(_size)

#: Where the options that reach `build_convert_options` through the click context keep their values.
_META = "unswift.convert"


def _remember(ctx: click.Context, param: click.Parameter, value):
    """Keep an option's value in the context for `build_convert_options` (not passed to the command)."""
    if param.name == "max_shard_size":
        value = checked_size(ctx, param, value)
    elif param.name == "slowdown":
        value = checked(ctx, param, value)
    ctx.meta.setdefault(_META, {})[param.name] = value
    return value


def dry_run_requested() -> bool:
    """Whether the running command was given --dry-run (see `convert_options`)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.meta.get(_META, {}).get("dry_run"))


def convert_options(func: Callable) -> Callable:
    """The convert options (docs/INTERFACE.md#convert-options), in the order --help shows them.

    --slowdown, --max-shard-size and --dry-run are not passed to the command function: they reach
    `build_convert_options` (and `dry_run_requested`) through the click context.
    """
    options = [
        click.option("--order", type=int, default=8, show_default=True, callback=checked,
                     help="Series order N: each expanded channel releases N+1 coefficient vectors."),
        click.option("--slowdown", type=float, default=None, expose_value=False, callback=_remember,
                     help="Decode slowdown wanted (batch 1) after the truncation attack, e.g. 2: coverage and "
                          "per-channel orders (no padding) are chosen and timed on this machine; exit 2 naming the "
                          "largest honest value when X is above it. Needs --stats for --dry-run's ceiling. "
                          "Excludes --order and --coverage."),
        click.option("--coverage", default="auto", show_default=True, callback=checked_coverage,
                     help="Fraction of MLP channels expanded, or 'auto': the largest whose measured top-1 "
                          "agreement on held-out text meets --min-top1."),
        click.option("--fit", type=click.Choice(["weighted", "taylor"]), default="weighted", show_default=True,
                     help="'taylor' = the paper's derivative coefficients about the range midpoint; 'weighted' "
                          "= least squares over the calibrated distribution (Chebyshev basis, measured better)."),
        click.option("--allocation", type=click.Choice(["boost", "uniform"]), default="boost", show_default=True,
                     help="'boost': with the weighted fit, channels get order N-1 or 2N (the 1/(N+1) whose error "
                          "drops most), reading the same bytes as order N; used only where it lowers the expected "
                          "error. 'uniform': every channel order N."),
        click.option("--min-top1", type=float, default=None, callback=checked,
                     help="Fidelity threshold: picks --coverage auto (default 0.995); in `release` a miss "
                          "stops before pushing (exit 1)."),
        click.option("--calibration", "calibration", type=click.Path(), default=None,
                     help="Calibration text: a text file, a .jsonl with a 'text' field, or a folder of .txt. "
                          "Default: text sampled from the checkpoint itself."),
        click.option("--calibration-tokens", type=int, default=DEFAULT_TOKENS, show_default=True, callback=checked),
        click.option("--calibration-seed", type=int, default=0, show_default=True, callback=checked),
        click.option("--stats", type=click.Path(), default=None, help="Reuse a calibration from `unswift calibrate`."),
        click.option("--hardening/--no-hardening", default=True, show_default=True,
                     help="Secret signs, scales, hidden centres and channel permutation. --fit taylor "
                          "--no-hardening reproduces the paper's release."),
        click.option("--secret-file", type=click.Path(), default=None,
                     help="Hardening secret (or env UNSWIFT_SECRET). Default: a new secret in DIR.secret, "
                          "mode 0600, next to the output folder."),
        click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
                     help="Release dtype. Default: the source's."),
        click.option("--license", "license_", default=None, help="SPDX licence id for the card (e.g. apache-2.0)."),
        click.option("--base-model", default=None, help="Hub id of the source model, for the card."),
        click.option("--max-shard-size", default="2GB", show_default=True, expose_value=False, callback=_remember,
                     help="Largest safetensors shard of the release (e.g. 1GB, 500MB): conversion holds at most "
                          "one shard's tensors in memory."),
        click.option("--overwrite", is_flag=True, help="Replace an existing output folder."),
        click.option("--recipient", default=None, metavar="NAME", expose_value=False, callback=_remember,
                     help="Make NAME's fingerprinted copy: a pattern keyed by the publisher's secret, NAME and "
                          "each tensor, and NAME's own hardening secret derived from it. --secret-file is then "
                          "the publisher's secret (default: LEDGER's .secret beside the ledger). Nothing in "
                          "the release names NAME."),
        click.option("--ledger", type=click.Path(), default=None, expose_value=False, callback=_remember,
                     help="The publisher's ledger (JSON Lines, kept outside every release, never holds the "
                          "secret) that --recipient appends to. Default: ./unswift-ledger.jsonl."),
        click.option("--dry-run", is_flag=True, expose_value=False, callback=_remember,
                     help="Print the plan and write nothing: order, coverage, release size on disk, memory a "
                          "user needs at each dtype, predicted decode slowdown. JSON fields: dry_run, order, "
                          "coverage ('auto' when measured later), dtype, release_bytes, source_bytes, memory "
                          "(per dtype: weights_bytes, kv_cache_bytes, total_bytes, context), "
                          "predicted_decode_slowdown, context, candidates (the choices a measurement picks "
                          "from), slowdown (with --slowdown)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def fingerprint_request(*, listed: bool = False) -> tuple[str | None, str | None]:
    """(--recipient, --ledger) of the running command (see `convert_options`); `listed`: the recipients
    come from elsewhere (`release --recipients`), so --ledger alone is fine."""
    ctx = click.get_current_context(silent=True)
    extra = ctx.meta.get(_META, {}) if ctx is not None else {}
    if extra.get("ledger") is not None and extra.get("recipient") is None and not listed:
        raise UsageError("--ledger is the ledger a fingerprinted copy is recorded in: pass --recipient NAME too")
    return extra.get("recipient"), extra.get("ledger")


def build_convert_options(order: int, coverage: float | None, fit: str, min_top1: float | None, hardening: bool,
                          dtype: str | None, license_: str | None, base_model: str | None,
                          allocation: str = "boost", *, allow_dry_run: bool = False):
    """ConvertOptions from the parsed options (plus those kept in the click context), validated.

    Raises:
        UsageError: conflicting or invalid options; --dry-run on a command that does not plan
            (`allow_dry_run=False`).
    """
    from packager.api import ConvertOptions

    ctx = click.get_current_context(silent=True)
    extra = ctx.meta.get(_META, {}) if ctx is not None else {}
    if extra.get("dry_run") and not allow_dry_run:
        raise UsageError("--dry-run is not available for this command; run `unswift convert ... --dry-run` "
                         "to see the plan")
    slowdown = extra.get("slowdown")
    if slowdown is not None and ctx is not None:
        for name, flag in (("order", "--order"), ("coverage", "--coverage")):
            if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None):
                raise UsageError(f"--slowdown chooses the series order and coverage; drop {flag}")
    kwargs = {}
    if extra.get("max_shard_size") is not None:
        kwargs["max_shard_bytes"] = extra["max_shard_size"]
    options = ConvertOptions(order=order, coverage=coverage, fit=fit, allocation=allocation,
                             min_top1=0.995 if min_top1 is None else min_top1, hardening=hardening,
                             dtype=dtype, license=license_, base_model=base_model, slowdown=slowdown, **kwargs)
    options.validate()
    return options


def report_plan(report, source, options, stats=None) -> None:
    """Print (and put in the JSON report) what converting `source` with `options` would produce."""
    from packager import api

    planned = api.plan(source, options, stats=stats)
    report.update(planned)
    memory = planned["memory"][planned["dtype"]]
    coverage = planned["coverage"]
    coverage_text = coverage if isinstance(coverage, str) else f"{coverage:.3f}"
    report.say(f"plan (nothing written): order {planned['order']}, coverage {coverage_text}, release "
               f"{api.format_size(planned['release_bytes'])} on disk ({planned['dtype']}), "
               f"{api.format_size(memory['total_bytes'])} to run at {memory['context']} tokens, predicted "
               f"decode slowdown {planned['predicted_decode_slowdown']:.2f}x")
    if planned.get("slowdown"):
        ceiling = planned["slowdown"].get("padding_ceiling")
        if ceiling is None:
            report.say("  (bytes model only: the largest slowdown without padding needs --stats; convert measures "
                       "the slowdown after truncation on this machine)")
        else:
            report.say(f"  (the richest release without padding reads {ceiling:.2f}x the source's bytes per token; "
                       "convert measures the slowdown after truncation, which is lower, and ships what it keeps)")
