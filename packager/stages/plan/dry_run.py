"""`--dry-run`: what a conversion would produce, from the checkpoint's safetensors headers alone."""

from __future__ import annotations

from packager.formats.checkpoint import Checkpoint
from packager.stages.options import MAX_ORDER, ConvertOptions
from packager.stages.plan.coverage import CANDIDATES


def plan(checkpoint: Checkpoint, options: ConvertOptions, *, context: int | None = None, stats=None) -> dict:
    """What converting with `options` would produce, from the checkpoint's headers alone (`--dry-run`).

    Nothing is calibrated, loaded or written. Channels are assumed expanded in the same share in every
    MLP unit (the real selection is global; for dense models of one width the sizes are the same).
    With `--coverage auto` or `--slowdown`, the final choice is made by measurement: the figures are
    those of the first candidate, and every candidate is listed. With `--slowdown` and statistics
    (`stats`), the channels' padding-free orders are computed (fits, no forward pass) and a request above
    the richest release without padding is refused (exit 2); the figures are that release's. Without
    statistics that ceiling is unknown and the figures are the bytes model's uniform order at full
    coverage, before the padding cap.

    Returns:
        JSON fields: dry_run, order, coverage ('auto' when measured later), dtype, release_bytes,
        source_bytes, memory (per dtype: weights_bytes, kv_cache_bytes, total_bytes, context),
        predicted_decode_slowdown, context, candidates, and slowdown (with `options.slowdown`).
    """
    from packager.maths.sizing import ReleaseSizer, dominant_dtype, plan_json
    from packager.stages.bench import DEFAULT_CONTEXT

    options.validate()
    context = context or DEFAULT_CONTEXT
    dtype = options.dtype or dominant_dtype(ReleaseSizer(checkpoint, dtype="float32").source)
    sizer = ReleaseSizer(checkpoint, dtype=dtype)
    out: dict = {"dry_run": True, "source": checkpoint.name, "dtype": dtype, "fit": options.fit,
                 "mlp_channels": sizer.channels}
    if options.slowdown is not None:
        out.update(_slowdown_plan(checkpoint, options, sizer, stats, context=context, dtype=dtype))
        candidates = [dict(out)]
    elif options.coverage is None:
        candidates = [plan_json(sizer, options.order, sizer.uniform(c), context=context) for c in CANDIDATES]
        out.update(candidates[0])
        out["coverage"] = "auto"
    else:
        candidates = [plan_json(sizer, options.order, sizer.uniform(options.coverage), context=context)]
        out.update(candidates[0])
    out["candidates"] = candidates
    return out


def _slowdown_plan(checkpoint: Checkpoint, options: ConvertOptions, sizer, stats, *, context: int, dtype: str
                   ) -> dict:
    """The `--slowdown` part of a dry run (see `plan`)."""
    from packager.errors import UsageError
    from packager.maths.sizing import memory_needed, plan_json, weight_bytes
    from packager.stages.plan.slowdown import TOLERANCE, beyond_ceiling, layers_of, padding_ceiling

    wanted = options.slowdown
    if stats is None:
        reachable = [n for n in range(1, MAX_ORDER + 1)
                     if sizer.predicted(n, sizer.uniform(1.0), context=context) >= wanted]
        if not reachable:
            raise UsageError(
                f"--slowdown {wanted:g} is beyond this model: at order {MAX_ORDER} and full coverage a release "
                f"reads {sizer.reach(MAX_ORDER, context=context):.2f}x the source's bytes per decoded token",
                hint="ask for a smaller --slowdown")
        return {**plan_json(sizer, reachable[0], sizer.uniform(1.0), context=context),
                "slowdown": {"requested": wanted, "padding_ceiling": None,
                             "basis": "bytes model only, before the padding cap: the largest slowdown without "
                                      "padding needs calibration statistics (pass --stats); the largest after "
                                      "truncation is measured by convert"}}
    if checkpoint.adapter.experts is not None:
        raise UsageError("--slowdown does not support mixture-of-experts checkpoints yet")
    ceiling, _, caps = padding_ceiling(checkpoint, stats, options, dtype=dtype, context=context)
    if wanted > ceiling * (1.0 + TOLERANCE):
        raise UsageError(beyond_ceiling(wanted, ceiling), hint="ask for a smaller --slowdown")
    tensors = sizer.layer_tensors(layers_of(caps))
    expanded = sum(int((c >= 0).sum()) for c in caps)
    return {"order": max(int(c.max()) for c in caps), "coverage": expanded / max(sizer.channels, 1),
            "release_bytes": weight_bytes(tensors), "source_bytes": weight_bytes(sizer.source),
            "memory": memory_needed(tensors, sizer.config), "predicted_decode_slowdown": ceiling,
            "context": context,
            "slowdown": {"requested": wanted, "padding_ceiling": ceiling,
                         "basis": "figures of the richest release without padding (full coverage, every channel "
                                  "at its padding-free order), from the statistics; convert measures the largest "
                                  "slowdown after truncation (forward passes) and ships what that keeps, a "
                                  "smaller release than this"}}
