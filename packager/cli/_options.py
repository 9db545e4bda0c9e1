"""Options shared by `convert` and `release`, with one help text each."""

from __future__ import annotations

import re
from collections.abc import Callable

import click
from click.core import ParameterSource

from packager.api import UsageError

#: Same as packager.stages.calibrate.DEFAULT_TOKENS (a test checks); not imported so `--help` stays fast.
DEFAULT_TOKENS = 16384


def _coverage(value: str) -> float | None:
    if value == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"--coverage '{value}' is not a number or 'auto'") from None


#: Where the options that reach `build_convert_options` through the click context keep their values.
_META = "unswift.convert"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


def parse_size(value: str) -> int:
    """Bytes from '2GB', '500MB', '1.5GiB' or a plain number of bytes."""
    match = _SIZE.match(str(value))
    if not match:
        raise UsageError(f"--max-shard-size '{value}' is not a size; write e.g. 2GB, 500MB or 1GiB")
    unit = (match.group(2) or "").lower().removesuffix("b")
    return int(float(match.group(1)) * _UNITS[unit])


def _remember(ctx: click.Context, param: click.Parameter, value):
    """Keep an option's value in the context for `build_convert_options` (not passed to the command)."""
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
        click.option("--order", type=int, default=8, show_default=True,
                     help="Series order N: each expanded channel releases N+1 coefficient vectors."),
        click.option("--slowdown", type=float, default=None, expose_value=False, callback=_remember,
                     help="Decode slowdown wanted (batch 1), e.g. 4: order and coverage are chosen by the bytes "
                          "model, refined by timing on this machine, best measured fidelity among the choices "
                          "that reach it. Excludes --order and --coverage."),
        click.option("--coverage", default="auto", show_default=True,
                     help="Fraction of MLP channels expanded, or 'auto': the largest whose measured top-1 "
                          "agreement on held-out text meets --min-top1."),
        click.option("--fit", type=click.Choice(["weighted", "taylor"]), default="weighted", show_default=True,
                     help="'taylor' = the paper's derivative coefficients about the range midpoint; 'weighted' "
                          "= least squares over the calibrated distribution (Chebyshev basis, measured better)."),
        click.option("--allocation", type=click.Choice(["boost", "uniform"]), default="boost", show_default=True,
                     help="'boost': with the weighted fit, channels get order N-1 or 2N (the 1/(N+1) whose error "
                          "drops most), reading the same bytes as order N; used only where it lowers the expected "
                          "error. 'uniform': every channel order N."),
        click.option("--min-top1", type=float, default=None,
                     help="Fidelity threshold: picks --coverage auto (default 0.995); in `release` a miss "
                          "stops before pushing (exit 1)."),
        click.option("--calibration", "calibration", type=click.Path(), default=None,
                     help="Calibration text: a text file, a .jsonl with a 'text' field, or a folder of .txt. "
                          "Default: text sampled from the checkpoint itself."),
        click.option("--calibration-tokens", type=int, default=DEFAULT_TOKENS, show_default=True),
        click.option("--calibration-seed", type=int, default=0, show_default=True),
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


def build_convert_options(order: int, coverage: str, fit: str, min_top1: float | None, hardening: bool,
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
        kwargs["max_shard_bytes"] = parse_size(extra["max_shard_size"])
    options = ConvertOptions(order=order, coverage=_coverage(coverage), fit=fit, allocation=allocation,
                             min_top1=0.995 if min_top1 is None else min_top1, hardening=hardening,
                             dtype=dtype, license=license_, base_model=base_model, slowdown=slowdown, **kwargs)
    options.validate()
    return options


def report_plan(report, source, options) -> None:
    """Print (and put in the JSON report) what converting `source` with `options` would produce."""
    from packager import api

    planned = api.plan(source, options)
    report.update(planned)
    memory = planned["memory"][planned["dtype"]]
    coverage = planned["coverage"]
    coverage_text = coverage if isinstance(coverage, str) else f"{coverage:.3f}"
    report.say(f"plan (nothing written): order {planned['order']}, coverage {coverage_text}, release "
               f"{planned['release_bytes'] / 1e9:.2f} GB on disk ({planned['dtype']}), "
               f"{memory['total_bytes'] / 1e9:.2f} GB to run at {memory['context']} tokens, predicted "
               f"decode slowdown {planned['predicted_decode_slowdown']:.2f}x")
    if planned.get("slowdown"):
        report.say("  (bytes model only: convert times candidates on this machine and picks the one that measures "
                   "the slowdown asked, often a larger release than this; see `candidates` in --json)")
