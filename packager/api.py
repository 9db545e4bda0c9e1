"""The Python entry points: one function per stage, plus `release`. The CLI wraps exactly these.

    from packager import api
    stats = api.calibrate("./ckpt")
    result = api.convert("./ckpt", "releases/model", stats=stats)
    report = api.evaluate("releases/model", "./ckpt")
    timing = api.bench("releases/model", "./ckpt", batches=(1, 8))
    print(api.plan("./ckpt", ConvertOptions(slowdown=4)))   # what convert would write, nothing written
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from packager.formats.atomic import check_output
from packager.formats.checkpoint import Checkpoint, open_checkpoint
from packager.formats.secret import Secret, resolve_secret
from packager.maths.transform import boost_channels, select_channels
from packager.stages.calibrate import DEFAULT_TOKENS, Stats
from packager.stages.calibrate import calibrate as _calibrate
from packager.stages.convert import (
    ConvertOptions,
    ConvertResult,
    layer_tensors,
    plan_layers,
    release_spec,
    write_release,
)
from packager.stages.evaluate import DEFAULT_EVAL_TOKENS, EvalReport
from packager.stages.evaluate import evaluate as _evaluate

Progress = Callable[[str], None] | None


def _checkpoint(checkpoint: str | Path | Checkpoint) -> Checkpoint:
    return checkpoint if isinstance(checkpoint, Checkpoint) else open_checkpoint(checkpoint)


def calibrate(
    checkpoint: str | Path | Checkpoint, *, text: str | Path | None = None, tokens: int = DEFAULT_TOKENS,
    seed: int = 0, out: str | Path | None = None, overwrite: bool = False, progress: Progress = None,
    model=None, device: str = "cpu",
) -> Stats:
    """Per-channel activation statistics of every MLP (see `packager.stages.calibrate.calibrate`).

    `device="auto"` spreads the model over every visible device with accelerate's `device_map`.

    Raises:
        UsageError: bad checkpoint or text source, or `out` exists without `overwrite`.
    """
    source = _checkpoint(checkpoint)
    if out is not None:
        check_output(Path(out), overwrite=overwrite, folder=False)
    stats = _calibrate(source, text=text, tokens=tokens, seed=seed, progress=progress, model=model, device=device)
    if out is not None:
        stats.save(Path(out))
    return stats


def convert(
    checkpoint: str | Path | Checkpoint, out: str | Path, *, stats: Stats | str | Path | None = None,
    options: ConvertOptions | None = None, calibration: str | Path | None = None,
    calibration_tokens: int = DEFAULT_TOKENS, calibration_seed: int = 0, secret_file: str | Path | None = None,
    overwrite: bool = False, progress: Progress = None,
) -> tuple[ConvertResult, Secret]:
    """Write an (unsigned) release folder.

    Options are validated and the output folder checked before calibration starts. With
    `options.coverage is None` the coverage is chosen by measurement (`packager.stages.plan.coverage`).

    Returns:
        The result and the secret that seeded hardening (its `path` is where it was stored).

    Raises:
        UsageError: bad options, checkpoint, statistics or output folder.
    """
    options = options or ConvertOptions()
    options.validate()
    out = Path(out)
    source = _checkpoint(checkpoint)
    check_output(out, overwrite=overwrite)
    if options.slowdown is not None:
        from packager.stages.plan.slowdown import check_supported

        check_supported(source)  # before the model is loaded and calibrated
    secret = resolve_secret(secret_file, out)
    model = None
    if isinstance(stats, (str, Path)):
        stats = Stats.load(Path(stats))
    measuring = options.coverage is None or options.slowdown is not None
    if measuring or (stats is None and calibration is None):
        # Measured choices need the model in memory; so does text sampled from it. Calibration from a
        # text file alone reads the checkpoint one decoder layer at a time (`calibrate.gather`).
        model = source.load_model(torch.float32)
    if stats is None:
        stats = _calibrate(source, text=calibration, tokens=calibration_tokens, seed=calibration_seed,
                           progress=progress, model=model)
    say = progress or (lambda _msg: None)
    from packager.stages.plan.slowdown import resolve_slowdown

    options, plans, slowdown = resolve_slowdown(source, model, stats, options, progress=progress)
    if plans is None:
        say(f"fitting order-{options.order} {options.fit} series for {source.num_layers} layers")
        plans = plan_layers(source, stats, options)
    trials: list[dict] = []
    coverage = options.coverage
    if coverage is None:
        from packager.stages.plan.coverage import choose_coverage

        coverage, trials = choose_coverage(
            source, model, plans, min_top1=options.min_top1, seed=stats.seed,
            build_spec=lambda masks: release_spec(source, stats, options, masks, plans, secret.value, "float32",
                                                  boost_channels(plans, masks, options.order)),
            build_layer=lambda masks, i: layer_tensors(source, plans, masks, options, secret.value, i,
                                                       boost_channels(plans, masks, options.order)),
            progress=progress,
        )
    masks = select_channels(plans, coverage, options.fit)
    result = write_release(source, out, stats=stats, options=options, plans=plans, masks=masks, secret=secret,
                           overwrite=overwrite, progress=progress,
                           extra_record={"coverage_trials": trials, "slowdown": slowdown})
    return result, secret


def evaluate(
    release_dir: str | Path, reference: str | Path | Checkpoint, *, text: str | Path | None = None,
    prompts: str | Path | None = None, tokens: int = DEFAULT_EVAL_TOKENS, seed: int = 0,
    dtype: str | None = None, device: str | None = None, min_top1: float | None = None,
    max_kl: float | None = None, progress: Progress = None,
) -> EvalReport:
    """Fidelity of a release against its source (see `packager.stages.evaluate.evaluate`)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return _evaluate(Path(release_dir), _checkpoint(reference), text=text, prompts=prompts, tokens=tokens,
                     seed=seed, dtype=dtype, device=device, min_top1=min_top1, max_kl=max_kl, progress=progress)


def bench(release_dir: str | Path, reference: str | Path | Checkpoint, **kwargs):
    """Decode and prefill slowdown of a release against its source (see `packager.stages.bench.bench`)."""
    from packager.stages.bench import bench as _bench

    return _bench(release_dir, _checkpoint(reference), **kwargs)


def plan(checkpoint: str | Path | Checkpoint, options: ConvertOptions | None = None, *,
         context: int | None = None) -> dict:
    """What `convert` would write, from the checkpoint's headers alone (see `packager.stages.convert.plan`)."""
    from packager.stages.convert import plan as _plan

    return _plan(_checkpoint(checkpoint), options or ConvertOptions(), context=context)


def record_measurement(release_dir: str | Path, field: str, value) -> bool:
    """Store a measurement in unswift.json; a signature over the old record is removed, never left stale.

    Returns:
        True if `model.sig` was removed (the release must be re-signed).
    """
    from packager.formats.record import update_record

    release_dir = Path(release_dir)
    update_record(release_dir, **{field: value})
    signature = release_dir / "model.sig"
    if signature.exists():
        signature.unlink()
        return True
    return False
