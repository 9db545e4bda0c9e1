"""Options shared by `convert` and `release`, with one help text each."""

from __future__ import annotations

from collections.abc import Callable

import click

from packager.errors import UsageError

#: Same as packager.calibrate.DEFAULT_TOKENS (a test checks); not imported so `--help` stays fast.
DEFAULT_TOKENS = 16384


def _coverage(value: str) -> float | None:
    if value == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"--coverage '{value}' is not a number or 'auto'") from None


def convert_options(func: Callable) -> Callable:
    """The convert options of CONTRACT, in the order --help shows them."""
    options = [
        click.option("--order", type=int, default=8, show_default=True,
                     help="Series order N: each expanded channel releases N+1 coefficient vectors."),
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
        click.option("--overwrite", is_flag=True, help="Replace an existing output folder."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_convert_options(order: int, coverage: str, fit: str, min_top1: float | None, hardening: bool,
                          dtype: str | None, license_: str | None, base_model: str | None,
                          allocation: str = "boost"):
    from packager.convert import ConvertOptions

    options = ConvertOptions(order=order, coverage=_coverage(coverage), fit=fit, allocation=allocation,
                             min_top1=0.995 if min_top1 is None else min_top1, hardening=hardening,
                             dtype=dtype, license=license_, base_model=base_model)
    options.validate()
    return options
