"""`unswift audit`: attack a release with the known attacks, scan it for leaks, and report what was found.

TaylorMLP is reversible by algebra; the audit measures how much of the source an attacker gets back,
how fast, and how good a model rebuilt from it is, so that the card quotes measurements, not claims.

- Attacks (`packager.stages.audit.attacks`) see only the release. The source checkpoint (`reference`) is used
  afterwards to score them (`scoring`): `recovered_fraction` counts the elements of the protected MLP
  weights (gate rows, up rows and down columns of expanded channels) within 1 % relative error of the
  original. Without a reference those fields are null; the rebuilt model (`rebuild`) is then compared
  with the release itself.
- The leak scan (`leaks`) hashes every row and column of every released tensor and looks up every
  source vector the release declares protected; `protected_param_fraction` uses the same hashes.

This module runs them in order and shares what they share (`_Bench`): the release model, loaded once,
the held-out and attacker texts (`texts`), the source MLPs and the target logits.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from packager.devices import hardware_name
from packager.errors import CheckFailed, UsageError
from packager.formats.release import ReleaseFiles
from packager.formats.secret import ENV, read_secret
from packager.limits import check
from packager.maths.series.activations import Activation, get_activation
from packager.progress import Progress, reporter
from packager.stages.audit.attacks import ATTACK_NAMES, RecoveredMLP, ReleasedMLP, by_group, merge_extras
from packager.stages.audit.leaks import leak_scan
from packager.stages.audit.rebuild import rebuilt_top1
from packager.stages.audit.report import AttackResult, AuditReport, LearningBudget
from packager.stages.audit.scoring import Tally, expanded_source_channels, score_unit
from packager.stages.audit.texts import attacker_ids, capture_io, heldout_ids
from packager.threads import map_blocks


def released_mlp(release: ReleaseFiles, index: int) -> ReleasedMLP:
    """MLP unit `index` of the release as an attacker holds it: its tensors (float64) and the public spec."""
    spec, entry, name = release.spec, release.spec["layers"][index], release.units[index] + "."
    out_bias = release.tensor(name + "out_bias").double() if release.has(name + "out_bias") else None
    return ReleasedMLP(
        in_weight=release.tensor(name + "in_proj.weight").double(),
        in_bias=release.tensor(name + "in_proj.bias").double(),
        theta=release.tensor(name + "theta").double(), out_bias=out_bias,
        intermediate=int(entry["intermediate"]), expanded=int(entry["expanded"]),
        order=int(spec["order"]), basis=spec["basis"], extrapolation=spec["extrapolation"],
        fit=spec["fit"], activation=get_activation(spec["hidden_act"]), gated=bool(spec["gated"]),
        groups=tuple((int(g["channels"]), int(g["order"])) for g in entry.get("groups") or ()),
    )


def audit(
    release_dir: str | Path, *, reference=None, secret_file: str | Path | None = None,
    max_recovered: float | None = None, attacks: Iterable[str] = ATTACK_NAMES,
    learning: LearningBudget | None = None, kerckhoffs_data: bool = False, progress: Progress = None,
    export_rebuilt: str | Path | None = None, overwrite: bool = False, timing_steps: int | None = None,
) -> AuditReport:
    """Run the known attacks and the leak scan on a release.

    Args:
        release_dir: the release folder.
        reference: the source checkpoint (path, Hub id or `Checkpoint`); without it recovered fractions,
            the leak scan and `protected_param_fraction` are null, and rebuilt models are compared with
            the release.
        secret_file: the release secret (else `UNSWIFT_SECRET`); only checked against `secret_id`, never
            given to an attack.
        max_recovered: raise `CheckFailed` if an attack recovers a larger fraction (needs `reference`).
        attacks: which attacks to run, of `coefficient_ratio`, `kerckhoffs`, `learning`, `truncation`
            (always run last: it times the kerckhoffs rebuild).
        learning: the learning attack's budget (its `tokens` also size the attacker's text).
        kerckhoffs_data: give the `kerckhoffs` attacker MLP inputs recorded on its own text (it then
            refits with their histogram); by default it uses no data at all.
        export_rebuilt: write the model the strongest attack rebuilt (highest `rebuilt_top1` among the
            attacks that rebuild every unit) as a plain transformers checkpoint to this folder
            (`packager.stages.audit.export`); `overwrite` replaces an existing one.
        timing_steps: decode steps per model the truncation attack times (default that of `unswift
            bench`; `release` passes its budget's).

    Returns:
        The report (also attached to `CheckFailed.details` when the threshold is missed).

    Raises:
        UsageError: an option out of range (before anything is loaded), not a release, unknown attack,
            a learning unit the release does not have, secret mismatch, or `max_recovered` without reference.
        CheckFailed: an attack recovered more than `max_recovered`.
    """
    from packager.formats.checkpoint import Checkpoint, open_checkpoint
    from packager.stages.evaluate import compare_to_logits, load_release, reference_logits
    from packager.stages.tensors import source_mlp

    say = reporter(progress)
    attacks = list(attacks)
    unknown = [name for name in attacks if name not in ATTACK_NAMES]
    if unknown:
        raise UsageError(f"unknown attack {unknown[0]!r}; choose from {', '.join(ATTACK_NAMES)}")
    if max_recovered is not None and reference is None:
        raise UsageError("--max-recovered needs --reference: recovered fractions are measured against the "
                         "source checkpoint")
    check("--max-recovered", max_recovered)
    budget = learning or LearningBudget()
    budget.validate()
    release = ReleaseFiles(Path(release_dir))
    if budget.layers is not None:
        outside = [unit for unit in budget.layers if unit >= len(release.units)]
        if outside:
            raise UsageError(f"--learning-units {outside[0]} is out of range: this release has "
                             f"{len(release.units)} MLP units, numbered 0 to {len(release.units) - 1}")
    if export_rebuilt is not None:
        from packager.stages.audit.export import check_export

        check_export(Path(export_rebuilt), release, overwrite=overwrite)
        if not any(name in attacks for name in ("coefficient_ratio", "kerckhoffs")):
            raise UsageError("--export-rebuilt needs an attack that rebuilds every unit (coefficient_ratio or "
                             "kerckhoffs)")
    notes: list[str] = []
    secret_note = _check_secret(release, secret_file)
    if secret_note:
        notes.append(f"secret: {secret_note} (not used by any attack)")
    checkpoint = None
    if reference is not None:
        checkpoint = reference if isinstance(reference, Checkpoint) else open_checkpoint(reference)
    torch.manual_seed(budget.seed)

    say("loading the release through its own loader")
    model = load_release(release.path, dtype=torch.float32)
    ids, text_source = heldout_ids(release)
    bench = _Bench(model=model, ids=ids, units=release.units,
                   activation=get_activation(release.spec["hidden_act"]), budget=budget)
    # One row at a time (batch_size=1): the figures do not depend on how rows are batched or padded.
    if checkpoint is not None:
        source_model = checkpoint.load_model(torch.float32)
        bench.target = reference_logits(source_model, ids, batch_size=1)
        del source_model
        bench.compared_with = "source"
        release_top1 = compare_to_logits(bench.target, model, ids, batch_size=1).top1_agreement
        bench.sources = [source_mlp(checkpoint, i) for i in range(len(bench.units))]
        bench.protected = [expanded_source_channels(released_mlp(release, i), bench.sources[i].gate)
                           for i in range(len(bench.units))]
    else:
        bench.target = reference_logits(model, ids, batch_size=1)
        release_top1 = None
        notes.append("no --reference: recovered fractions, protected_param_fraction and the leak scan need "
                     "the source checkpoint and are null; rebuilt models are compared with the release")
    if "kerckhoffs" in attacks and release.spec.get("out_bias"):
        notes.append("kerckhoffs assumes the source's gate projection has no bias (it reads the centre from "
                     "the released bias); this family's MLPs have biases, so its figures understate what a "
                     "knowledgeable attacker recovers")
    bench.learning_units = list(budget.layers) if budget.layers is not None else [len(bench.units) // 2]
    bench.release_top1 = release_top1
    bench.checkpoint = checkpoint
    if "truncation" in attacks:
        attacks = [name for name in attacks if name != "truncation"] + ["truncation"]  # after kerckhoffs
        if "kerckhoffs" not in attacks:
            notes.append("truncation without kerckhoffs: the knowledgeable rebuild is not timed")
    if "learning" in attacks or (kerckhoffs_data and "kerckhoffs" in attacks):
        say(f"attacker data: running the release on up to {budget.tokens} tokens of the attacker's text")
        start = time.perf_counter()
        data, source_name = attacker_ids(release, model, budget.tokens)
        inputs_of = range(len(bench.units)) if kerckhoffs_data else bench.learning_units
        bench.io = capture_io(model, bench.units, data, inputs=inputs_of, outputs=bench.learning_units)
        bench.data = {"tokens": int(data.numel()), "source": source_name,
                      "seconds": round(time.perf_counter() - start, 3)}
    results, rebuilt = [], {}
    for name in attacks:
        say(f"attack {name}")
        if name == "truncation":
            result = _run_truncation(release, bench, steps=timing_steps, progress=progress)
            results.append(result)
            say(f"  truncation: Θ kept {result.extra['kept_fraction']:.3f}, effective slowdown "
                f"{_fmt(result.extra['effective_slowdown'])}, top-1 {result.rebuilt_top1:.4f} vs the "
                f"{bench.compared_with}")
            continue
        result, recovered = _run_attack(name, release, bench, kerckhoffs_data=kerckhoffs_data)
        results.append(result)
        if len(recovered) == len(bench.units):
            rebuilt[name] = (result.rebuilt_top1, recovered)
        say(f"  {name}: recovered {_fmt(result.recovered_fraction)}, relative error "
            f"{_fmt(result.relative_error)}, {result.seconds:.1f} s, rebuilt top-1 {result.rebuilt_top1:.4f} "
            f"vs the {bench.compared_with}")
    fraction = leaks = None
    if checkpoint is not None:
        say("leak scan: hashing every released row and column")
        fraction, leaks = leak_scan(release, checkpoint, bench.sources, bench.protected)
    report = AuditReport(protected_param_fraction=fraction, attacks=results, leaks=leaks,
                         reference=(checkpoint.name if checkpoint is not None else None),
                         heldout_tokens=int(ids.numel()), release_top1=release_top1,
                         notes=notes + [f"held-out text: {text_source}"], hardware=hardware_name("cpu"))
    if export_rebuilt is not None:
        from packager.stages.audit.export import export_rebuilt as export

        best = max(rebuilt, key=lambda name: rebuilt[name][0])
        export(Path(export_rebuilt), release, rebuilt[best][1], overwrite=overwrite)
        report.notes.append(f"rebuilt model of the '{best}' attack written to {export_rebuilt}")
        say(f"wrote the '{best}' attack's rebuilt model to {export_rebuilt} (plain transformers checkpoint)")
    worst = report.max_recovered()
    if max_recovered is not None and worst is not None and worst > max_recovered:
        scored = [a for a in results if a.recovered_fraction is not None]
        offender = max(scored, key=lambda a: a.recovered_fraction)
        raise CheckFailed(
            f"attack '{offender.name}' recovered {worst:.4f} of the protected weights > --max-recovered "
            f"{max_recovered}", details=report.to_json())
    return report


def _check_secret(release: ReleaseFiles, secret_file: str | Path | None) -> str | None:
    """Check the given secret (file, else `UNSWIFT_SECRET`) against the release's `secret_id`.

    Returns a note when a secret was given, None when none was. No attack ever sees the secret.
    """
    from packager.maths.transform import secret_id

    secret = read_secret(secret_file)
    if secret is None:
        return None
    recorded = release.spec.get("hardening", {}).get("secret_id")
    if recorded and secret_id(secret.value) != recorded:
        origin = f"--secret-file '{secret.path}'" if secret.origin == "file" else ENV
        raise UsageError(f"the secret from {origin} is not this release's (secret_id {recorded})",
                         hint="pass the DIR.secret file written when the release was converted")
    return "matches the release's secret_id"


@dataclass
class _Bench:
    """What every attack of one audit shares: the release model, texts, source weights, attacker data."""

    model: torch.nn.Module
    ids: torch.Tensor
    units: list[str]
    activation: Activation
    budget: LearningBudget
    target: list[torch.Tensor] | None = None  # logits to agree with, one [1, L-1, V] tensor per row of ids
    compared_with: str = "release"
    sources: list | None = None
    protected: list[torch.Tensor] | None = None
    learning_units: list[int] = field(default_factory=list)
    io: dict = field(default_factory=dict)
    data: dict | None = None
    release_top1: float | None = None
    checkpoint: object = None
    #: the kerckhoffs attack's recovered MLPs (the knowledgeable rebuild the truncation attack times)
    rebuilt: dict[int, RecoveredMLP] | None = None


def _run_truncation(release: ReleaseFiles, bench: _Bench, *, steps: int | None, progress: Progress) -> AttackResult:
    """The truncation attack (`packager.stages.audit.truncation`) and its figures on held-out text."""
    from packager.stages.audit import truncation
    from packager.stages.audit.texts import attacker_text
    from packager.stages.bench import DEFAULT_CONTEXT
    from packager.stages.evaluate import compare_to_logits, reference_logits

    model = bench.model
    ids = attacker_text(release, model, bench.budget.tokens, seq_len=bench.budget.sample_length,
                        progress=reporter(progress))
    release_logits = reference_logits(model, bench.ids, batch_size=1)

    def check() -> tuple[bool, dict]:
        to_target = compare_to_logits(bench.target, model, bench.ids, batch_size=1)
        to_release = compare_to_logits(release_logits, model, bench.ids, batch_size=1)
        # 0.001 of a few hundred held-out tokens is less than one token: one token of slack is the resolution
        slack = max(truncation.TOP1_DROP, 1.0 / max(bench.ids[:, 1:].numel(), 1))
        floor = (bench.release_top1 if bench.release_top1 is not None else 1.0) - slack
        ok = to_target.top1_agreement >= floor and to_release.kl_mean <= truncation.KL_BOUND
        return ok, {"heldout_top1": to_target.top1_agreement, "heldout_kl_vs_release": to_release.kl_mean}

    source = None
    if bench.checkpoint is not None:
        source = bench.checkpoint.load_model(next(model.parameters()).dtype)
    start = time.perf_counter()
    figures = truncation.run(model, bench.units, lambda i: released_mlp(release, i), release.spec, ids, check=check,
                             rebuilt=bench.rebuilt,
                             activation=bench.activation, source=source, context=DEFAULT_CONTEXT,
                             steps=steps or truncation.TIMING_STEPS, progress=progress)
    seconds = time.perf_counter() - start
    del source
    modules = figures.pop("_modules")
    originals = truncation.swap(model, bench.units, modules)
    try:
        top1 = compare_to_logits(bench.target, model, bench.ids, batch_size=1).top1_agreement
    finally:
        truncation.swap(model, bench.units, originals)
    figures["heldout_top1"] = top1
    figures["release_heldout_top1"] = bench.release_top1
    return AttackResult(name="truncation", recovered_fraction=None, relative_error=None, seconds=round(seconds, 3),
                        rebuilt_top1=top1, rebuilt_compared_with=bench.compared_with, units_attacked=len(bench.units),
                        extra=figures)


def _run_attack(name: str, release: ReleaseFiles, bench: _Bench, *, kerckhoffs_data: bool
                ) -> tuple[AttackResult, dict[int, RecoveredMLP]]:
    """Run one attack on every unit it targets, score it and measure its rebuilt model."""
    from packager.stages.audit.attacks import coefficient_ratio, kerckhoffs
    from packager.stages.audit.attacks import learning as learning_attack

    attacked = bench.learning_units if name == "learning" else list(range(len(bench.units)))
    recovered: dict[int, RecoveredMLP] = {}
    start = time.perf_counter()
    if name == "learning":  # seeded Adam steps: one unit after another, on torch's own threads
        for i in attacked:
            x, y = bench.io[i]
            recovered[i] = learning_attack.recover(released_mlp(release, i), x, y, steps=bench.budget.steps,
                                                   lr=bench.budget.lr, seed=bench.budget.seed)
    else:  # algebra per unit, no randomness: units spread over the cores, as an attacker would run them
        def attack(i: int) -> RecoveredMLP:
            if name == "coefficient_ratio":
                return by_group(coefficient_ratio.recover, released_mlp(release, i))
            inputs = bench.io[i][0] if kerckhoffs_data else None
            return by_group(lambda view: kerckhoffs.recover(view, inputs=inputs), released_mlp(release, i))

        recovered = dict(zip(attacked, map_blocks(attack, attacked), strict=True))
    seconds = time.perf_counter() - start
    if name == "kerckhoffs":
        bench.rebuilt = recovered
    tally = Tally()
    if bench.sources is not None:
        for i, out in recovered.items():
            score_unit(tally, out, bench.sources[i], bench.protected[i])
    rebuilt = rebuilt_top1(bench.model, bench.units, recovered, bench.activation, bench.target, bench.ids)
    extra = merge_extras([out.extra for out in recovered.values() if out.extra])
    if name == "learning" or (name == "kerckhoffs" and kerckhoffs_data):
        extra["attacker_data"] = bench.data
    if name == "learning":
        budget = bench.budget
        extra["budget"] = {"steps": budget.steps, "tokens": (bench.data or {}).get("tokens", 0),
                           "tokens_requested": budget.tokens, "units": attacked, "lr": budget.lr}
    return AttackResult(
        name=name, recovered_fraction=tally.fraction, relative_error=tally.relative_error,
        seconds=round(seconds, 3), rebuilt_top1=rebuilt, rebuilt_compared_with=bench.compared_with,
        recovered_fraction_up_to_scale=tally.fraction_up_to_scale, units_attacked=len(attacked), extra=extra,
    ), recovered


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
