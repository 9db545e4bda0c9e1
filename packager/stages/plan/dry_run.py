"""`--dry-run`: what a conversion would produce, from the checkpoint's safetensors headers alone."""

from __future__ import annotations

from packager.formats.checkpoint import Checkpoint
from packager.stages.options import MAX_ORDER, ConvertOptions
from packager.stages.plan.coverage import CANDIDATES
from packager.stages.plan.slowdown import candidate_orders


def plan(checkpoint: Checkpoint, options: ConvertOptions, *, context: int | None = None) -> dict:
    """What converting with `options` would produce, from the checkpoint's headers alone (`--dry-run`).

    Nothing is calibrated, loaded or written. Channels are assumed expanded in the same share in every
    MLP unit (the real selection is global; for dense models of one width the sizes are the same).
    With `--coverage auto` or `--slowdown`, the final choice is made by measurement: the figures are
    those of the first candidate, and every candidate is listed.

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
        choices = candidate_orders(sizer, options.slowdown, context=context, max_order=MAX_ORDER)
        candidates = [plan_json(sizer, order, sizer.uniform(coverage), context=context) for order, coverage in choices]
        out.update(candidates[0])
        out["slowdown"] = {"requested": options.slowdown, "basis": "bytes model only; convert refines it by "
                           "timing on the publishing machine and picks the candidate of best measured fidelity"}
    elif options.coverage is None:
        candidates = [plan_json(sizer, options.order, sizer.uniform(c), context=context) for c in CANDIDATES]
        out.update(candidates[0])
        out["coverage"] = "auto"
    else:
        candidates = [plan_json(sizer, options.order, sizer.uniform(options.coverage), context=context)]
        out.update(candidates[0])
    out["candidates"] = candidates
    return out
