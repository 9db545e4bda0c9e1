"""`--slowdown X`: the series order and coverage whose measured decode slowdown is X, best fidelity first.

1. The bytes model (`packager.maths.sizing`) gives, for each order N, the coverage at which a release reads
   X times the source's bytes per decoded token (a non-integer N is met by a coverage below 1).
2. The publishing machine corrects it: the source model decodes interleaved with itself carrying runtime
   `TaylorMLP`s of a candidate's shapes (their values do not change the time), and the bytes target is
   moved by the secant rule until the measured decode slowdown is X within `TOLERANCE`.
3. Candidates reaching the corrected target: the lowest order that can (highest coverage) and a few
   higher orders at lower coverage, never below `MIN_COVERAGE`.
4. The fidelity of each is measured in memory on held-out text against the source's logits. Each MLP
   computes exactly the release's function (the fitted series on expanded channels, the activation on
   the others; hardening changes no value) without the (N+1)-fold matrix, so a candidate costs one
   forward pass of source size; float32 rounding apart it is what the release computes.
5. The best candidate (top-1 agreement, then KL, then coverage) is timed again; a miss beyond the
   tolerance corrects its coverage (at most twice, its fidelity measured again each time).
6. A timing holds the model and a full set of the candidate's TaylorMLPs in memory; when they would
   not fit (`ROOM_SHARE` of what the device has free), timing stops and the choice rests on the bytes
   model and the timings already taken, which the record's `note` says.

Mixture-of-experts checkpoints are refused for now (the in-memory fidelity path handles dense MLPs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from packager.devices import hardware_name
from packager.errors import UsageError
from packager.formats.checkpoint import Checkpoint
from packager.formats.stats import Stats
from packager.maths.series.fit import CHEBYSHEV_FIT_LIMIT
from packager.maths.sizing import ReleaseSizer
from packager.maths.transform import LayerPlan, select_channels
from packager.progress import Progress, reporter
from packager.stages.bench import DEFAULT_CONTEXT, clock_for
from packager.stages.evaluate import reference_logits
from packager.stages.options import MAX_ORDER
from packager.stages.plan.fits import plan_layers
from packager.stages.plan.measure import (
    ROOM_SHARE,
    NoRoom,
    measure_fidelity,
    measure_slowdown,
    pad,
    timing_memory,
)

#: Measured slowdown within this relative distance of the request ends the search.
TOLERANCE = 0.04
MAX_TIMINGS = 4
FINAL_ADJUSTMENTS = 2
#: A final measurement this far below the request means the machine cannot show it: refuse.
UNREACHABLE = 0.10
#: Candidates never expand fewer channels than this (the paper's releases expand 56-70 %).
MIN_COVERAGE = 0.5
CANDIDATES = 3
SELECTION_TOKENS = 2048
SELECTION_SEQ_LEN = 256
SELECTION_SEED_OFFSET = 600


@dataclass(frozen=True)
class SlowdownChoice:
    """The (order, coverage) chosen for a requested slowdown, and the evidence (unswift.json "slowdown")."""

    requested: float
    order: int
    coverage: float
    predicted: float
    measured: float | None
    fidelity: dict | None
    device: str
    dtype: str
    context: int
    hardware: str
    threads: int
    clock: str = "wall"
    candidates: list[dict] = field(default_factory=list)
    timings: list[dict] = field(default_factory=list)
    note: str | None = None  # why the choice was not (fully) measured, when it was not
    plans: list[LayerPlan] = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("plans")
        out["method"] = ("bytes model refined by interleaved decode timing on this machine; fidelity on "
                         "held-out text, series evaluated without the (N+1)-fold matrix")
        return out


def _plans(checkpoint: Checkpoint, stats: Stats, options, order: int, cache: dict) -> list[LayerPlan]:
    """Plans at `order` (cached). Weighted fits stop at `CHEBYSHEV_FIT_LIMIT`: above it every order's
    plan is the limit's with zero coefficients appended, and the order allocation has nothing to gain."""
    if order not in cache:
        if options.fit == "weighted" and order > CHEBYSHEV_FIT_LIMIT:
            if "limit" not in cache:
                limit = dataclasses.replace(options, order=CHEBYSHEV_FIT_LIMIT, allocation="uniform")
                cache["limit"] = plan_layers(checkpoint, stats, limit)
            cache[order] = [LayerPlan(pad(plan.fit, order), plan.score, plan.width) for plan in cache["limit"]]
        else:
            cache[order] = plan_layers(checkpoint, stats, dataclasses.replace(options, order=order))
    return cache[order]


def _counts(masks: list[torch.Tensor]) -> list[int]:
    return [int(m.sum()) for m in masks]


def _exact_coverage(sizer: ReleaseSizer, plans: list[LayerPlan], fit: str, order: int, target: float,
                    context: int) -> float | None:
    """The coverage whose actual channel selection predicts `target` at `order` (None if out of reach)."""
    return sizer.coverage_for(target, order, context=context,
                              expanded_for=lambda c: _counts(select_channels(plans, c, fit)))


def candidate_orders(sizer: ReleaseSizer, target: float, *, context: int, max_order: int,
                     count: int = CANDIDATES, min_coverage: float = MIN_COVERAGE) -> list[tuple[int, float]]:
    """(order, coverage) pairs the bytes model says reach `target`: the lowest order, then higher ones.

    Raises:
        UsageError: no allowed order reaches `target` even at full coverage.
    """
    reachable: dict[int, float] = {}
    for order in range(1, max_order + 1):
        coverage = sizer.coverage_for(target, order, context=context)
        if coverage is None:
            continue
        if reachable and coverage < min_coverage:
            break
        reachable[order] = coverage
    if not reachable:
        raise UsageError(
            f"--slowdown {target:g} is beyond this model: at order {max_order} and full coverage a release "
            f"reads {sizer.reach(max_order, context=context):.2f}x the source's bytes per decoded token",
            hint="ask for a smaller --slowdown")
    usable = {n: c for n, c in reachable.items() if c >= min_coverage} or dict([next(iter(reachable.items()))])
    top = max(usable.values())
    goals = [top - (top - min_coverage) * i / max(count - 1, 1) for i in range(count)]
    chosen: dict[int, float] = {}
    for goal in goals:
        order = min(usable, key=lambda n: abs(usable[n] - goal))
        chosen[order] = usable[order]
    return sorted(chosen.items())


# -- the choice -----------------------------------------------------------------------------------


def _secant(points: list[tuple[float, float]], goal: float, ceiling: float) -> float:
    """Next bytes target from (predicted, measured) points.

    The secant through the last point and the latest one at least 25 % of bytes away from it; without
    one (or when noise makes the secant flat), the line through the last point and (1, 1), which is
    what a release reading the source's bytes measures. Close points are not used: timing noise of a
    few percent would swing a secant between them wildly.
    """
    p1, m1 = points[-1]
    p0, m0 = next(((p, m) for p, m in reversed(points[:-1]) if abs(p - p1) >= 0.25 * p1), (1.0, 1.0))
    slope = (m1 - m0) / (p1 - p0) if p1 != p0 else 0.0
    if slope <= 1e-3:
        slope = max((m1 - 1.0) / max(p1 - 1.0, 1e-6), 1e-3)
    return min(max(p1 + (goal - m1) / slope, 1.0 + 1e-3), ceiling)


def choose_slowdown(
    checkpoint: Checkpoint, model, stats: Stats, options, *, dtype: str = "float32",
    context: int = DEFAULT_CONTEXT, max_order: int | None = None, tokens: int = SELECTION_TOKENS,
    measure: bool = True, progress: Progress = None,
) -> SlowdownChoice:
    """Choose order and coverage for a requested decode slowdown (see the module docstring).

    Args:
        checkpoint: the source.
        model: the source model loaded (float32), or None to use the bytes model alone (no timing,
            no fidelity: the highest-coverage candidate is taken).
        stats: its calibration.
        options: the convert options; `options.slowdown` is the decode slowdown wanted (batch 1,
            `context` tokens of KV cache); fit, allocation and hardening are those of the release.
        dtype: the release's dtype (the bytes model's runtime dtype).

    Raises:
        UsageError: the slowdown is out of reach, or the checkpoint is a mixture of experts.
    """
    say = reporter(progress)
    max_order = max_order or MAX_ORDER
    slowdown, fit = float(options.slowdown), options.fit
    check_supported(checkpoint)
    sizer = ReleaseSizer(checkpoint, dtype=dtype)
    cache: dict = {}
    plans_for = lambda n: _plans(checkpoint, stats, options, n, cache)  # noqa: E731
    timings: list[dict] = []
    device = str(next(model.parameters()).device) if model is not None else "cpu"

    def timed(order: int, expanded: list[int]) -> float:
        needed, available = timing_memory(model, sizer, order, expanded)
        if needed > ROOM_SHARE * available:
            raise NoRoom(f"timing order {order} at coverage {sum(expanded) / sizer.channels:.2f} needs "
                          f"{needed / 1e9:.1f} GB beside the model and {available / 1e9:.1f} GB are available")
        predicted = sizer.predicted(order, expanded, context=context)
        measured = measure_slowdown(model, checkpoint, sizer, order, expanded, context=context)
        timings.append({"order": order, "coverage": sum(expanded) / sizer.channels, "predicted": predicted,
                        "measured": measured})
        say(f"  order {order}, coverage {sum(expanded) / sizer.channels:.3f}: bytes model {predicted:.2f}x, "
            f"measured {measured:.2f}x")
        return measured

    target = slowdown
    ceiling = sizer.reach(max_order, context=context)
    points = [(1.0, 1.0)]  # (predicted, measured): a release that reads the source's bytes runs at its speed
    note = None
    if model is not None and measure:
        say(f"--slowdown {slowdown:g}: timing the bytes model's choice on this machine ({device})")
        try:
            for _ in range(MAX_TIMINGS - 1):
                order, coverage = candidate_orders(sizer, target, context=context, max_order=max_order, count=1)[0]
                measured = timed(order, sizer.uniform(coverage))
                points.append((timings[-1]["predicted"], measured))
                if abs(measured / slowdown - 1.0) <= TOLERANCE:
                    break
                target = _secant(points, slowdown, ceiling)
        except NoRoom as err:
            measure = False
            note = (f"not measured further: {err}; the choice rests on the bytes model"
                    + (" and the timings above" if timings else ""))
            say(f"  {note}")
    candidates = candidate_orders(sizer, target, context=context, max_order=max_order)
    say(f"bytes target {target:.2f}x; candidates (order, coverage): "
        + ", ".join(f"({n}, {c:.2f})" for n, c in candidates))

    ids = reference = None
    if model is not None:
        from packager.stages.text import sample_text

        text = sample_text(model, checkpoint.load_tokenizer(), kind="eval", tokens=tokens,
                           seq_len=SELECTION_SEQ_LEN, seed=stats.seed + SELECTION_SEED_OFFSET)
        ids = text.ids
        reference = reference_logits(model, ids, batch_size=4)
    rows = []
    for order, _ in candidates:
        plans = plans_for(order)
        coverage = _exact_coverage(sizer, plans, fit, order, target, context) or 1.0
        masks = select_channels(plans, coverage, fit)
        row = {"order": order, "coverage": sum(_counts(masks)) / sizer.channels,
               "predicted": sizer.predicted(order, _counts(masks), context=context), "fidelity": None}
        if ids is not None:
            row["fidelity"] = measure_fidelity(model, checkpoint, plans, masks, order, ids, reference)
            say(f"  order {order}, coverage {row['coverage']:.3f}: top-1 {row['fidelity']['top1_agreement']:.4f}, "
                f"KL {row['fidelity']['kl_mean']:.2e}")
        rows.append(row)

    def rank(row: dict):
        fid = row["fidelity"] or {"top1_agreement": 0.0, "kl_mean": 0.0}
        return (-fid["top1_agreement"], fid["kl_mean"], -row["coverage"])

    best = min(rows, key=rank)
    order, plans = best["order"], plans_for(best["order"])
    coverage_request = _exact_coverage(sizer, plans, fit, order, target, context) or 1.0
    masks = select_channels(plans, coverage_request, fit)
    measured = None
    if model is not None and measure:
        try:
            measured = timed(order, _counts(masks))
            for _ in range(FINAL_ADJUSTMENTS):  # the chosen order's coverage is corrected, its fidelity re-measured
                if abs(measured / slowdown - 1.0) <= TOLERANCE:
                    break
                points.append((timings[-1]["predicted"], measured))
                adjusted = _exact_coverage(sizer, plans, fit, order, _secant(points, slowdown, ceiling), context)
                if adjusted is None or adjusted == coverage_request:
                    break
                masks = select_channels(plans, adjusted, fit)
                measured = timed(order, _counts(masks))
                coverage_request = adjusted
                best = {**best, "fidelity": measure_fidelity(model, checkpoint, plans, masks, order, ids, reference)}
        except NoRoom as err:
            masks = select_channels(plans, coverage_request, fit)  # the last choice whose timing fitted
            note = f"the final choice was not timed: {err}"
            say(f"  {note}")
    if measured is not None and measured < slowdown * (1.0 - UNREACHABLE):
        raise UsageError(
            f"--slowdown {slowdown:g} is out of reach on this machine: the release chosen (order {order}, coverage "
            f"{sum(_counts(masks)) / sizer.channels:.2f}, {timings[-1]['predicted']:.1f}x the source's bytes per "
            f"token) measures {measured:.2f}x; this model's decode time here is dominated by fixed per-token costs",
            hint="ask for a smaller --slowdown, or pass --order and --coverage and check with `unswift bench`")
    counts = _counts(masks)
    threads = torch.get_num_threads() if device == "cpu" else 0
    return SlowdownChoice(
        requested=slowdown, order=order, coverage=coverage_request,
        predicted=sizer.predicted(order, counts, context=context), measured=measured,
        fidelity=best["fidelity"], device=device.split(":")[0],
        dtype=str(next(model.parameters()).dtype).removeprefix("torch.") if model is not None else dtype,
        context=context, hardware=hardware_name(device), threads=threads, clock=clock_for(device)[0],
        candidates=rows, timings=timings, note=note,
        plans=plans,
    )


def check_supported(checkpoint: Checkpoint) -> None:
    """Raise UsageError for a checkpoint `--slowdown` cannot handle (mixtures of experts, for now)."""
    if checkpoint.adapter.experts is not None:
        raise UsageError("--slowdown does not support mixture-of-experts checkpoints yet; pass --order and "
                         "--coverage (and check the result with `unswift bench`)")


def resolve_slowdown(checkpoint: Checkpoint, model, stats: Stats, options, *, progress: Progress = None):
    """What `api.convert` does with `options.slowdown`: (options with order/coverage set, plans, record).

    Returns `(options, None, None)` unchanged when no slowdown is requested.
    """
    if options.slowdown is None:
        return options, None, None
    from packager.formats.safetensors import folder_tensors
    from packager.maths.sizing import dominant_dtype

    dtype = options.dtype or dominant_dtype(folder_tensors(checkpoint.path))
    choice = choose_slowdown(checkpoint, model, stats, options, dtype=dtype, progress=progress)
    chosen = dataclasses.replace(options, order=choice.order, coverage=choice.coverage)
    return chosen, choice.plans, choice.to_json()
