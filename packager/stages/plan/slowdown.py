"""`--slowdown X`: a release whose measured decode slowdown *after the audit's truncation* is X.

What a release enforces against anyone who does not rebuild the weights is the slowdown that remains
once the trailing terms that change nothing visible are dropped (`packager.stages.audit.truncation`).
So `--slowdown` is defined as that figure, measured, and the release ships what the truncation keeps:

1. Every channel is fitted at `FIT_ORDER` (16: higher-degree fits measured less faithful) and capped at
   its padding-free order M_j (`packager.maths.padding`): the richest release without padding. Its
   bytes-model slowdown is a hard ceiling (`padding_ceiling`); a request above it is refused (exit 2)
   before any model is loaded. `--dry-run` reports it from the statistics.
2. The truncation search runs in memory on that full-coverage candidate, on text the source samples
   (greedy prompts, a seed of its own): the attacker's evaluator built from the fits (no Θ), the same
   bisection to self top-1 >= 0.999 and KL <= 1e-3. Its kept orders, timed with runtime modules of their
   shapes interleaved with the source, give X_max, the largest honest slowdown; a request above
   X_max (1 + TOLERANCE) exits 2 naming it.
3. Below X_max, coverage is lowered (the channels of largest fit error go plaintext first, as
   `select_channels` ranks them) with the same λ, by the secant rule on measured after-truncation
   timings, until within TOLERANCE; the search is then run again on the chosen candidate (fewer channels
   leave the attacker more room) and its kept orders timed. Coverage first: every expanded channel costs
   its kept terms, plaintext costs one column.
4. The release ships the kept orders (rounded up into groups, never above M_j). An attacker truncating
   the shipped release again finds a little more to drop (its tolerance is relative to the release it
   holds); the audit's `truncation` figure on the written release is the check.

Mixture-of-experts checkpoints are refused for now.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from packager.devices import hardware_name
from packager.errors import UsageError
from packager.formats.checkpoint import Checkpoint
from packager.formats.stats import Stats
from packager.maths.sizing import ReleaseSizer
from packager.maths.transform import LayerPlan, release_orders, select_channels
from packager.progress import Progress, reporter
from packager.stages.bench import DEFAULT_CONTEXT, clock_for
from packager.stages.plan.fits import plan_layers
from packager.stages.plan.measure import (
    ROOM_SHARE,
    NoRoom,
    measure_slowdown,
    measure_slowdown_by_chunks,
    timing_memory,
)

#: Order every channel is fitted at before the padding cap. Not higher: on the demo model the candidate
#: fitted at 32 (bin-centre fit) or 48 (with the sub-binned fit above 32) and capped at its padding-free
#: orders agrees with the source far less than one fitted at 16 (top-1 0.988 / 0.990, KL 5.2e-3 / 7.4e-3,
#: against 0.998 / 9.1e-5 at 16, 1,020 predictions of the search's own text, the attacker's evaluator):
#: high-degree weighted fits on 256 bins are poorly determined between the bins, and truncating them is
#: not the low-degree weighted fit. So the richest honest release is bounded by what order 16 carries.
FIT_ORDER = 16
#: A measured after-truncation slowdown within this relative distance of the request ends the search.
TOLERANCE = 0.05
MAX_TIMINGS = 5
SEARCH_TOKENS = 2048
SEARCH_SEQ_LEN = 256
SEARCH_SEED_OFFSET = 600


@dataclass
class SlowdownChoice:
    """What `--slowdown` chose and the evidence (unswift.json "slowdown")."""

    requested: float
    coverage: float
    largest: float | None  # X_max: measured after-truncation slowdown at full coverage
    measured: float | None  # measured after-truncation slowdown of the shipped shapes
    predicted: float  # bytes model of the shipped shapes
    padding_ceiling: float
    largest_measured: bool  # False: X_max is the bytes model's (no room to time it)
    log_lambda: float | None
    self_top1: float | None
    self_kl: float | None
    fidelity: dict | None
    device: str
    dtype: str
    context: int
    hardware: str
    threads: int
    clock: str
    timings: list[dict] = field(default_factory=list)
    trials: list[dict] = field(default_factory=list)
    note: str | None = None
    plans: list[LayerPlan] = field(default_factory=list, repr=False)
    masks: list[torch.Tensor] = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("plans")
        out.pop("masks")
        out["slowdowns"] = {
            "shipped": self.measured, "after_truncation": self.measured, "rebuild": None,
            "note": "measured at convert time: the release ships the orders its truncation search kept, so as "
                    "shipped and after truncation are the same shapes; `unswift audit` (truncation attack) "
                    "truncates the written release again and times it beside the knowledgeable rebuild"}
        out["definition"] = ("decode slowdown after the audit's truncation attack (trailing series terms "
                             "dropped while top-1 agreement with the release stays >= 0.999 and KL <= 1e-3)")
        out["method"] = ("per-channel orders up to the padding-free order; truncation search on the source's "
                         "own text; kept orders timed with runtime modules of their shapes, interleaved with "
                         "the source on this machine; coverage by the secant rule")
        return out


def check_supported(checkpoint: Checkpoint) -> None:
    """Raise UsageError for a checkpoint `--slowdown` cannot handle (mixtures of experts, for now)."""
    if checkpoint.adapter.experts is not None:
        raise UsageError("--slowdown does not support mixture-of-experts checkpoints yet; pass --order and "
                         "--coverage (and check the result with `unswift bench`)")


def rich_plans(checkpoint: Checkpoint, stats: Stats, options) -> list[LayerPlan]:
    """Every channel fitted at `FIT_ORDER` (uniform allocation): what the padding-free orders are cut from."""
    return plan_layers(checkpoint, stats, dataclasses.replace(options, order=FIT_ORDER, allocation="uniform",
                                                              slowdown=None))


def padding_free_orders(plans: list[LayerPlan]) -> list[torch.Tensor]:
    """Per unit, each channel's padding-free order at full coverage (-1: even its constant term is padding)."""
    return [release_orders(plan, torch.ones(plan.score.numel(), dtype=torch.bool), None)[1] for plan in plans]


def layers_of(orders: list[torch.Tensor]) -> list[dict]:
    """config "layers" entries (intermediate, expanded, groups) of units whose channels have these orders.

    -1 is a plaintext channel; -2 a channel dropped altogether (the truncation attack's).
    """
    out = []
    for o in orders:
        alive = o[o >= -1]
        distinct = sorted(set(int(v) for v in alive.tolist() if v >= 0))
        out.append({"intermediate": int(alive.numel()), "expanded": int((alive >= 0).sum()),
                    "groups": [{"channels": int((alive == v).sum()), "order": v} for v in distinct]})
    return out


def padding_ceiling(checkpoint: Checkpoint, stats: Stats, options, *, dtype: str, context: int = DEFAULT_CONTEXT
                    ) -> tuple[float, list[LayerPlan], list[torch.Tensor]]:
    """The bytes-model slowdown of the richest release without padding (full coverage at M_j), its plans
    and orders: no release slower than this is possible without shipping padding."""
    plans = rich_plans(checkpoint, stats, options)
    caps = padding_free_orders(plans)
    sizer = ReleaseSizer(checkpoint, dtype=dtype)
    return sizer.predicted_layers(layers_of(caps), context=context), plans, caps


def candidate_units(checkpoint: Checkpoint, plans: list[LayerPlan], orders: list[torch.Tensor]):
    """The attacker's view of a candidate release, built from the source and the fits (no Θ, no secret).

    Per unit a `ReleasedMLP` whose expanded rows are the normalised gate rows (grouped by order, ascending),
    then plaintext rows, then the up rows in the same order, and the rank-1 factors (down column,
    coefficients) of each expanded channel. The hardening's signs, scales and permutation change neither
    the function nor any energy, so they are left out.
    """
    from packager.stages.audit.attacks import ReleasedMLP
    from packager.stages.audit.attacks.truncation import Factors
    from packager.stages.tensors import source_mlp

    activation = plans[0].fit  # for the basis names
    units = []
    for index, (plan, o) in enumerate(zip(plans, orders, strict=True)):
        source = source_mlp(checkpoint, index)
        fit = plan.fit
        distinct = sorted(set(int(v) for v in o.tolist() if v >= 0))
        expanded = torch.cat([torch.nonzero(o == v).flatten() for v in distinct] or [torch.zeros(0, dtype=torch.long)])
        plain = torch.nonzero(o < 0).flatten()
        h, z0 = fit.half_width[expanded], fit.centre[expanded]
        gate_bias = source.gate_bias if source.gate_bias is not None else torch.zeros(source.gate.shape[0],
                                                                                       dtype=torch.float64)
        rows = [source.gate[expanded] / h.unsqueeze(-1), source.gate[plain]]
        bias = [(gate_bias[expanded] - z0) / h, gate_bias[plain]]
        if source.up is not None:
            up_bias = source.up_bias if source.up_bias is not None else torch.zeros(source.up.shape[0],
                                                                                     dtype=torch.float64)
            order = torch.cat([expanded, plain])
            rows.append(source.up[order])
            bias.append(up_bias[order])
        groups = [(int((o == v).sum()), v) for v in distinct]
        coefficients, start = [], 0
        for count, v in groups:
            coefficients.append(fit.coefficients[expanded[start:start + count], : v + 1].double())
            start += count
        hidden = source.down.shape[0]
        mlp = ReleasedMLP(in_weight=torch.cat(rows), in_bias=torch.cat(bias),
                          theta=torch.zeros(hidden, 0, dtype=torch.float64), out_bias=source.down_bias,
                          intermediate=o.numel(), expanded=int(expanded.numel()), order=max(distinct or [0]),
                          basis=activation.basis, extrapolation=activation.extrapolation, fit="weighted",
                          activation=_activation(checkpoint), gated=source.up is not None, groups=tuple(groups))
        factors = Factors(groups, coefficients, source.down[:, expanded].double(), source.down[:, plain].double(),
                          0.0)
        units.append((mlp, factors))
    return units


def _activation(checkpoint: Checkpoint):
    from packager.maths.series.activations import get_activation

    return get_activation(checkpoint.adapter.activation_name(checkpoint.config))


def _with_keeps(caps: list[torch.Tensor], masks: list[torch.Tensor], keeps: list[torch.Tensor]
                ) -> list[torch.Tensor]:
    """Per unit the orders after truncation: kept order on expanded channels (-2 dropped), -1 plaintext."""
    out = []
    for cap, mask, keep in zip(caps, masks, keeps, strict=True):
        o = torch.full_like(cap, -1)
        index = _expanded_in_release_order(cap, mask)
        o[index] = torch.where(keep < 0, torch.full_like(keep, -2), keep)
        out.append(o)
    return out


def _expanded_in_release_order(cap: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    o = torch.where(mask, cap, -1)
    distinct = sorted(set(int(v) for v in o.tolist() if v >= 0))
    return torch.cat([torch.nonzero(o == v).flatten() for v in distinct] or [torch.zeros(0, dtype=torch.long)])


def choose_slowdown(checkpoint: Checkpoint, model, stats: Stats, options, *, dtype: str = "float32",
                    context: int = DEFAULT_CONTEXT, progress: Progress = None) -> SlowdownChoice:
    """Choose coverage and per-channel orders for `options.slowdown` after truncation (module docstring).

    Raises:
        UsageError: the request is above the padding ceiling or the measured largest honest slowdown,
            the checkpoint is a mixture of experts, or the model is not loaded.
    """
    from packager.stages.audit.truncation import Attacker
    from packager.stages.evaluate import compare_to_logits, reference_logits
    from packager.stages.text import sample_text

    say = reporter(progress)
    check_supported(checkpoint)
    wanted = float(options.slowdown)
    ceiling, plans, caps = padding_ceiling(checkpoint, stats, options, dtype=dtype, context=context)
    say(f"--slowdown {wanted:g}: the richest release without padding reads {ceiling:.2f}x the source's bytes "
        "per decoded token")
    if wanted > ceiling * (1.0 + TOLERANCE):
        raise UsageError(beyond_ceiling(wanted, ceiling), hint="ask for a smaller --slowdown")
    if model is None:
        raise UsageError("--slowdown measures its choice and needs the source model loaded")
    sizer = ReleaseSizer(checkpoint, dtype=dtype)
    units = [u.name for u in checkpoint.adapter.units(checkpoint.config)]
    text = sample_text(model, checkpoint.load_tokenizer(), kind="greedy", tokens=SEARCH_TOKENS,
                       seq_len=SEARCH_SEQ_LEN, seed=stats.seed + SEARCH_SEED_OFFSET)
    source_logits = reference_logits(model, text.ids, batch_size=4)
    timings: list[dict] = []
    device = str(next(model.parameters()).device)

    def attacker_for(masks: list[torch.Tensor]) -> Attacker:
        orders = [torch.where(m, c, -1) for c, m in zip(caps, masks, strict=True)]
        built = candidate_units(checkpoint, plans, orders)
        return Attacker(model, units, [m for m, _ in built], text.ids, dtype=dtype, factors=[f for _, f in built])

    notes: list[str] = []

    def timed(coverage: float, shapes: list[torch.Tensor], label: str) -> tuple[float, bool]:
        """(slowdown, measured?): measured interleaved with the source (all layers at once, or a few at a
        time when they would not fit beside the model), or the bytes model when not even one layer fits
        (the record says which)."""
        layers = layers_of(shapes)
        predicted = sizer.predicted_layers(layers, context=context)
        needed, available = timing_memory(model, sizer, 0, None, layers)
        entry = {"what": label, "coverage": coverage, "predicted": predicted}
        if needed <= ROOM_SHARE * available:
            measured = measure_slowdown(model, checkpoint, sizer, 0, None, context=context, layers=layers)
            timings.append({**entry, "measured": measured, "chunks": 1})
            say(f"  {label}, coverage {coverage:.3f}: bytes model {predicted:.2f}x, measured {measured:.2f}x")
            return measured, True
        try:
            measured, chunks = measure_slowdown_by_chunks(model, checkpoint, sizer, 0, None, context=context,
                                                          room=int(ROOM_SHARE * available), layers=layers)
        except NoRoom as reason:
            note = f"not timed: {reason}; the bytes model's figure is used"
            if note not in notes:
                notes.append(note)
            timings.append({**entry, "measured": None})
            say(f"  {label}, coverage {coverage:.3f}: bytes model {predicted:.2f}x ({note})")
            return predicted, False
        timings.append({**entry, "measured": measured, "chunks": chunks})
        say(f"  {label}, coverage {coverage:.3f}: bytes model {predicted:.2f}x, measured {measured:.2f}x "
            f"({chunks} chunks of layers: the whole candidate needs {needed / 1e9:.1f} GB beside the model, "
            f"{available / 1e9:.1f} GB are available)")
        return measured, True

    full = [torch.ones(c.numel(), dtype=torch.bool) for c in caps]
    say("truncation search on the full-coverage candidate (the attacker's evaluator, from the fits)")
    attacker = attacker_for(full)
    truncation = attacker.search(progress=progress)
    largest, largest_timed = timed(1.0, _with_keeps(caps, full, truncation.keep), "after truncation")
    if wanted > largest * (1.0 + TOLERANCE):
        raise UsageError(beyond_largest(wanted, largest, ceiling, measured=largest_timed),
                         hint=f"ask for --slowdown {largest:.2f} or less")
    coverage, masks, value, was_timed, lam = 1.0, full, largest, largest_timed, truncation.lam
    points = [(0.0, 1.0), (1.0, largest)]
    for _ in range(MAX_TIMINGS - 1):
        if abs(value / wanted - 1.0) <= TOLERANCE:
            break
        coverage = _secant(points, wanted)
        masks = select_channels(plans, coverage, "weighted")
        keeps = _subset_keeps(attacker, caps, masks, lam)
        value, was_timed = timed(coverage, _with_keeps(caps, masks, keeps), "after truncation (λ of full coverage)")
        points.append((coverage, value))
    if coverage < 1.0:
        say(f"truncation search on the chosen candidate (coverage {coverage:.3f})")
        attacker = attacker_for(masks)
        truncation = attacker.search(progress=progress)
        value, was_timed = timed(coverage, _with_keeps(caps, masks, truncation.keep), "after truncation")
    note = "; ".join(notes) or None
    measured = value if was_timed else None
    shipped = _with_keeps(caps, masks, truncation.keep)
    with attacker.installed(truncation.keep, [torch.ones_like(p, dtype=torch.bool) for p in attacker.plains]):
        agreement = compare_to_logits(source_logits, model, text.ids, batch_size=4)
    fidelity = {"top1_agreement": agreement.top1_agreement, "kl_mean": agreement.kl_mean,
                "tokens": agreement.tokens, "text": text.source,
                "note": "the shipped orders evaluated from the fits (float32) against the source"}
    chosen = [dataclasses.replace(plan, orders=torch.where(o >= 0, o, -1)) for plan, o in zip(plans, shipped,
                                                                                           strict=True)]
    threads = torch.get_num_threads() if device == "cpu" else 0
    return SlowdownChoice(
        requested=wanted, coverage=coverage, largest=largest, measured=measured,
        predicted=sizer.predicted_layers(layers_of(shipped), context=context), padding_ceiling=ceiling,
        largest_measured=largest_timed,
        log_lambda=math.log(truncation.lam), self_top1=truncation.self_top1,
        self_kl=truncation.self_kl, fidelity=fidelity, device=device.split(":")[0],
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."), context=context,
        hardware=hardware_name(device), threads=threads, clock=clock_for(device)[0], timings=timings,
        trials=truncation.trials, note=note, plans=chosen, masks=[o >= 0 for o in shipped])


def _subset_keeps(attacker, caps: list[torch.Tensor], masks: list[torch.Tensor], lam: float) -> list[torch.Tensor]:
    """Kept orders of the channels `masks` expands, from the full-coverage attacker's tail energies at λ."""
    keeps, _ = attacker.choose(lam)
    out = []
    for cap, mask, keep in zip(caps, masks, keeps, strict=True):
        full_order = _expanded_in_release_order(cap, torch.ones_like(mask))
        chosen = set(_expanded_in_release_order(cap, mask).tolist())
        out.append(keep[torch.tensor([int(j) in chosen for j in full_order.tolist()], dtype=torch.bool)])
    return out


def _secant(points: list[tuple[float, float]], goal: float) -> float:
    """Next coverage from (coverage, measured) points: the secant through the points that bracket the goal
    (the highest coverage measured below it, the lowest above that measured at or above it).

    Timings are noisy, so a point may not bracket as expected; a coverage already tried is never proposed
    again (the bracket is halved instead), so the search cannot repeat one candidate.
    """
    below = [p for p in points if p[1] < goal]
    c0, m0 = max(below) if below else min(points)
    above = [p for p in points if p[1] >= goal and p[0] > c0]
    c1, m1 = min(above) if above else max(points)
    guess = c0 + (goal - m0) * (c1 - c0) / (m1 - m0) if m1 != m0 else (c0 + c1) / 2
    guess = min(max(guess, 0.05), 1.0)
    tried = {round(c, 4) for c, _ in points}
    if round(guess, 4) in tried:
        guess = (c0 + c1) / 2
    return guess


def beyond_ceiling(wanted: float, ceiling: float) -> str:
    return (f"--slowdown {wanted:g} cannot be reached without padding: the richest release whose every series "
            f"term carries something (full coverage, each channel at its padding-free order) reads "
            f"{ceiling:.2f}x the source's bytes per decoded token; the largest slowdown after truncation is "
            "lower and is measured by convert")


def beyond_largest(wanted: float, largest: float, ceiling: float, *, measured: bool = True) -> str:
    how = "measured on this machine" if measured else "by the bytes model (no room to time it here)"
    return (f"--slowdown {wanted:g} is beyond this model: the largest honest slowdown, after the truncation "
            f"attack on the full-coverage release without padding, is {largest:.2f}x, {how} (bytes-model "
            f"ceiling without padding {ceiling:.2f}x)")


def resolve_slowdown(checkpoint: Checkpoint, model, stats: Stats, options, *, progress: Progress = None):
    """What `convert` does with `options.slowdown`: (options, plans, masks, record); unchanged without it."""
    if options.slowdown is None:
        return options, None, None, None
    from packager.formats.safetensors import folder_tensors
    from packager.maths.sizing import dominant_dtype

    dtype = options.dtype or dominant_dtype(folder_tensors(checkpoint.path))
    choice = choose_slowdown(checkpoint, model, stats, options, dtype=dtype, progress=progress)
    chosen = dataclasses.replace(options, order=FIT_ORDER, coverage=choice.coverage, allocation="uniform")
    return chosen, choice.plans, choice.masks, choice.to_json()
