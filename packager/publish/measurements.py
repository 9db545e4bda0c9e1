"""The card's measured sections (fidelity, slowdown, protection) and their one-line headlines.

Every figure comes from the release record and is shown beside what it was measured on (hardware,
device, dtype), and every section says so when nothing was measured. The headlines are what a reader
(and the demo's closing summary, through `packager.api.headlines`) sees first; they are built from the
same record fields as the sections below them, so the two cannot disagree.

The slowdown table is built from `SLOWDOWN_COLUMNS`, one (header, cell) pair per column; beside it,
`three_slowdowns` shows the slowdown as shipped, after the truncation attack and after a knowledgeable
rebuild, which the audit measures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from packager.publish.formatting import measured_on, number, percent, seconds, text_source, times

#: How the card describes each attack the audit runs (docs/INTERFACE.md, `audit.attacks[].name`).
ATTACKS = {
    "coefficient_ratio": "the published closed-form attack, which reads weights off coefficient ratios",
    "kerckhoffs": "an attacker who knows unswift's method but not the publisher's secret",
    "learning": "an attacker who fits a plain MLP to input/output pairs of the released one",
    "truncation": "dropping the trailing series terms that change nothing visible, without rebuilding the weights",
}

#: The fidelity table: label, `eval` key, formatter.
EVAL_ROWS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("top-1 agreement (same next token as the source)", "top1_agreement", percent),
    ("KL(source ‖ release), nats per token", "kl_mean", number),
    ("perplexity of the source", "ppl_reference", number),
    ("perplexity of the release", "ppl_release", number),
    ("greedy match (prompts whose greedy continuation is identical)", "greedy_match", percent),
)

#: The slowdown table's columns after `batch`: header and cell, from one bench entry and the whole record.
SLOWDOWN_COLUMNS: tuple[tuple[str, Callable[[dict, dict], str]], ...] = (
    ("decode slowdown", lambda entry, record: times(entry.get("decode_slowdown"))),
    ("bytes model predicts (decode)", lambda entry, record: times(entry.get("predicted_decode_slowdown"))),
    ("prefill slowdown", lambda entry, record: times(entry.get("prefill_slowdown"))),
    ("FLOPs model predicts (prefill)", lambda entry, record: times(entry.get("predicted_prefill_slowdown"))),
)

#: What the bytes model does and does not predict: one sentence, under every slowdown table.
BYTES_MODEL = (
    "The bytes model counts the bytes of weights and KV cache read per decoded token, which set the pace "
    "of decoding at small batch; batched decode and prefill reuse every weight for many tokens and are "
    "bound by arithmetic instead, where the series' extra operations and the work both models share "
    "count rather than bytes, so batched decode can sit below the prediction and prefill above it. For "
    "prefill, the FLOPs model counts the multiply-adds of every weight matrix and of attention per prompt "
    "token (not the feature build, norms or activations)."
)

CAUTION = (
    "TaylorMLP is reversible by algebra: anyone who knows the method can compute the source model's "
    "MLP weights from the released coefficients, and a published attack does so without any data. "
    "Hardening raises the cost for an attacker who lacks the publisher's secret; it does not make the "
    "release a way to keep the weights private."
)


def bench_entries(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The record's bench entries (one entry written without its list is read as a list of one)."""
    bench = record.get("bench")
    return [bench] if isinstance(bench, dict) else list(bench or [])


# ------------------------------------------------------------------------------------------- headlines


def fidelity_headline(evaluation: dict[str, Any] | None) -> str | None:
    """'The release picks the source's next token on 99.70 % of 8,176 tokens (noise floor 99.99 %) ...'."""
    if not evaluation or evaluation.get("top1_agreement") is None:
        return None
    floor = evaluation.get("noise_floor")
    floor = floor.get("top1_agreement") if isinstance(floor, dict) else None
    tokens = evaluation.get("eval_tokens")
    of = f" of {number(tokens)} tokens" if isinstance(tokens, int) else ""
    return (f"the release picks the same next token as the source on {percent(evaluation['top1_agreement'])}"
            f"{of} (noise floor {percent(floor)}), measured on {measured_on(evaluation)}")


def slowdown_headline(record: dict[str, Any]) -> str | None:
    """The batch-1 decode slowdown beside the bytes model's, and where it was measured."""
    entries = bench_entries(record)
    if not entries:
        return None
    head = next((entry for entry in entries if entry.get("batch") == 1), entries[0])
    return (f"decoding is {times(head.get('decode_slowdown'))} slower than the source at batch "
            f"{head.get('batch', '?')} (bytes model: {times(head.get('predicted_decode_slowdown'))}), "
            f"measured on {measured_on(head)} with the shipped loader")


def protection_headline(audit: dict[str, Any] | None) -> str | None:
    """What the strongest attack measured gets: its rebuilt model's agreement, and how long it took."""
    attack = strongest_attack(audit)
    if attack is None:
        return None
    against = "the release" if attack.get("rebuilt_compared_with") == "release" else "the source"
    where = f" on {audit['hardware']}" if audit.get("hardware") else ""
    units = attack.get("units_attacked")
    scope = f" for the {number(units)} MLP unit{'s' if units != 1 else ''} it attacks" if isinstance(units, int) else ""
    return (f"{_who(attack, capital=False)} rebuilds plain MLPs{scope}, and the model rebuilt with them picks the "
            f"same next token as {against} on {percent(attack['rebuilt_top1'])} of held-out tokens, in "
            f"{seconds(attack.get('seconds'))}{where}")


def strongest_attack(audit: dict[str, Any] | None) -> dict[str, Any] | None:
    """The attack whose rebuilt model agrees best with its target (None when no model was rebuilt)."""
    rebuilt = [a for a in (audit or {}).get("attacks") or []
               if a.get("rebuilt_top1") is not None and a.get("name") != "truncation"]  # truncation keeps the series
    return max(rebuilt, key=lambda a: a["rebuilt_top1"]) if rebuilt else None


def _who(attack: dict[str, Any], *, capital: bool = True) -> str:
    name = attack.get("name", "unnamed")
    described = ATTACKS.get(name, "an attack the audit ran")
    return f"{described[0].upper() if capital else described[0]}{described[1:]} (`{name}`)"


# ------------------------------------------------------------------------------------------- sections


def command_line(section: dict[str, Any], default: str) -> str:
    """The recorded command that produced a section's figures, or the default one."""
    return f"`{section.get('command') or default}`"


def fidelity(evaluation: dict[str, Any] | None) -> str:
    if not evaluation:
        return "Not measured: `unswift eval` was not run on this release, so no fidelity figure is shown."
    floor = evaluation.get("noise_floor")
    tokens = evaluation.get("eval_tokens")
    counted = f"{number(tokens)} tokens of " if isinstance(tokens, int) else ""
    command = command_line(evaluation, "unswift eval RELEASE --reference SOURCE")
    lines = [
        f"Measured on {measured_on(evaluation)} by {command}. "
        f"Both models read the same {counted}{text_source(evaluation.get('text_source'))}, teacher-forced. "
        "The noise floor is the same metric for the source computed a second, mathematically identical way "
        "(another attention implementation): differences below it are numerical noise.",
        "",
        "| metric | release vs source | noise floor |",
        "| --- | --- | --- |",
    ]
    for label, key, fmt in EVAL_ROWS:
        if key not in evaluation:
            continue
        noise = floor.get(key) if isinstance(floor, dict) else None
        value = fmt(evaluation[key])
        if key == "greedy_match" and evaluation[key] is None:
            value = "not measured (no tokenizer)"
        lines.append(f"| {label} | {value} | {fmt(noise) if noise is not None else '—'} |")
    if isinstance(floor, int | float) and not isinstance(floor, bool):
        lines.append(f"\nNoise floor: {number(floor)}.")
    return "\n".join(lines)


def slowdown(record: dict[str, Any]) -> str:
    entries = bench_entries(record)
    if not entries:
        return "Not measured: `unswift bench` was not run on this release, so no slowdown figure is shown."
    lines = [
        f"Measured by {command_line(entries[0], 'unswift bench RELEASE --reference SOURCE')}: the median time "
        "per decoded (or prefilled) token of the release divided by the source's, both run interleaved in one "
        "process with the shipped loader. " + BYTES_MODEL,
    ]
    for conditions, group in _by_conditions(entries):
        lines += ["", f"Measured on {conditions}:", "",
                  "| batch | " + " | ".join(header for header, _ in SLOWDOWN_COLUMNS) + " |",
                  "| --- |" + " --- |" * len(SLOWDOWN_COLUMNS)]
        for entry in sorted(group, key=lambda e: e.get("batch") or 0):
            cells = [cell(entry, record) for _, cell in SLOWDOWN_COLUMNS]
            lines.append(f"| {entry.get('batch', '?')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def three_slowdowns(record: dict[str, Any]) -> str:
    """The three slowdowns side by side: as shipped, after truncation, after a knowledgeable rebuild.

    From the audit's `truncation` attack (all three timed interleaved); without it, from `--slowdown`'s
    choice at convert time (the rebuild is then not measured). Nothing is shown that was not measured.
    """
    attack = _truncation_attack(record)
    chosen = record.get("slowdown") if isinstance(record.get("slowdown"), dict) else None
    if attack is None and chosen is None:
        return ("Against whom the slowdown holds: not measured (`unswift audit` with its `truncation` attack "
                "times the release as shipped, after truncation, and after a knowledgeable rebuild).")
    head = ["Against whom the slowdown holds (decode, batch one, each divided by the source's time per token):",
            "", "| as shipped | after truncation | after a knowledgeable rebuild |", "| --- | --- | --- |"]
    if attack is not None:
        timing = attack.get("timing") or {}
        audit = record.get("audit") or {}
        where = f" on {audit['hardware']}" if audit.get("hardware") else ""
        row = (f"| {times(attack.get('shipped_slowdown'))} | {times(attack.get('effective_slowdown'))} | "
               f"{times(attack.get('rebuild_slowdown'))} |")
        note = (
            f"Measured{where} by {command_line(audit, 'unswift audit RELEASE --reference SOURCE')} on "
            f"{timing.get('threads', 'an unrecorded number of')} thread(s), interleaved, context "
            f"{timing.get('context', 'not recorded')}. After truncation: the release with every trailing series "
            "term dropped that an attacker can drop while the next token stays the release's own on all but "
            f"{percent(attack.get('top1_drop'))} of its text and the mean KL stays within "
            f"{number(attack.get('kl_bound'))} nats per token ({percent(attack.get('kept_fraction'))} of the "
            "series bytes kept); it needs no knowledge of the method. After a knowledgeable rebuild: the plain "
            "MLPs the `kerckhoffs` attack recovered, timed the same way."
        )
    else:
        row = f"| {times(chosen.get('measured'))} | {times(chosen.get('measured'))} | not measured |"
        note = (
            "Measured by `convert --slowdown` on the publishing machine: the release ships the orders its own "
            "truncation search kept, so as shipped and after truncation are the same shapes; an attacker "
            "truncating the shipped release again finds a little more to drop, which `unswift audit` measures, "
            "with the knowledgeable rebuild."
        )
    return "\n".join([*head, row, "", note])


def _truncation_attack(record: dict[str, Any]) -> dict[str, Any] | None:
    """The audit's `truncation` entry, if the audit ran it."""
    for attack in (record.get("audit") or {}).get("attacks") or []:
        if isinstance(attack, dict) and attack.get("name") == "truncation":
            return attack
    return None


def _by_conditions(entries: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Entries grouped by what they were measured on, each group described in words."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        groups.setdefault(_conditions(entry), []).append(entry)
    return list(groups.items())


def _conditions(entry: dict[str, Any]) -> str:
    details = []
    threads = entry.get("threads")
    if isinstance(threads, int) and threads > 0:
        details.append(f"{threads} torch thread{'s' if threads != 1 else ''}")
    if entry.get("clock") == "process_cpu":
        details.append("timed by the process's CPU time")
    elif entry.get("clock") == "wall":
        details.append("timed by the wall clock")
    if entry.get("context"):
        details.append(f"{number(entry['context'])} tokens of context")
    return measured_on(entry) + (f" ({', '.join(details)})" if details else "")


def protection(audit: dict[str, Any] | None) -> str:
    if not audit:
        return (
            f"This release was not audited: `unswift audit` was not run on it, so no attack figure is shown. "
            f"{CAUTION} Assume that the source MLP weights can be recovered from this release."
        )
    where = f" on {audit['hardware']}" if audit.get("hardware") else ""
    itself = (f" On that text the release itself picks the same next token as the source "
              f"{percent(audit['release_top1'])} of the time." if audit.get("release_top1") is not None else "")
    lines = [CAUTION, "",
             f"Measured{where} by {command_line(audit, 'unswift audit RELEASE --reference SOURCE')} (attack times "
             "are wall time there). Each attack sees only the release; a model is rebuilt from what it recovers "
             f"and compared with the source on held-out text.{itself} A weight counts as recovered within 1 % "
             "relative error, exactly or up to each channel's secret scale (a gauge that does not change what "
             "the model computes). What an attacker gets from this release:", ""]
    attacks = sorted(audit.get("attacks") or [], key=lambda a: -(a.get("rebuilt_top1") or 0.0))
    for attack in attacks:
        lines.append(f"- {_attack(attack)}")
    if audit.get("protected_param_fraction") is not None:
        lines.append(
            f"- Protected parameters: {percent(audit['protected_param_fraction'])} of the source's parameters "
            "do not appear in the release as they are (exactly, or up to sign and permutation); the others "
            "do."
        )
    leaks = audit.get("leaks")
    if leaks:
        found = "; ".join(f"`{leak.get('tensor')}` matches {_matches(leak.get('matches'))}" for leak in leaks)
        lines.append(f"- Leak scan: released tensors that equal source tensors: {found}.")
    elif leaks is not None:
        lines.append("- Leak scan: no released tensor equals a source tensor it should hide.")
    return "\n".join(lines)


def _attack(attack: dict[str, Any]) -> str:
    """One attack in words: what its rebuilt model does first, then how much of the weights it recovered."""
    if attack.get("name") == "truncation":
        return _truncation(attack)
    rebuilt = attack.get("rebuilt_top1")
    against = "the release" if attack.get("rebuilt_compared_with") == "release" else "the source"
    units = attack.get("units_attacked")
    scope = f" on {number(units)} MLP unit{'s' if units != 1 else ''}" if isinstance(units, int) and units else ""
    text = f"**{_who(attack)}**, in {seconds(attack.get('seconds'))}{scope}: "
    if rebuilt is None:
        text += "no model was rebuilt from what it recovered"
    else:
        text += (f"the model rebuilt with what it recovers picks the same next token as {against} "
                 f"{percent(rebuilt)} of the time")
    exact = attack.get("recovered_fraction")
    gauge = attack.get("recovered_fraction_up_to_scale")
    if gauge is not None:
        text += (f". It recovers {percent(gauge)} of the protected MLP weights up to the secret scales "
                 f"({percent(exact)} exactly)")
    elif exact is not None:
        text += (f". It recovers {percent(exact)} of the protected MLP weights (overall relative error "
                 f"{number(attack.get('relative_error'))})")
    return text + "."


def _truncation(attack: dict[str, Any]) -> str:
    """The truncation attack in words: bytes and time it keeps, not weights it recovers."""
    return (
        f"**{_who(attack)}**, in {seconds(attack.get('seconds'))}: kept {percent(attack.get('kept_fraction'))} "
        f"of the series bytes; the truncated release runs {times(attack.get('effective_slowdown'))} the source's "
        f"decode time and picks the same next token as the source {percent(attack.get('rebuilt_top1'))} of the "
        f"time (the release itself: {percent(attack.get('release_heldout_top1'))})."
    )


def _matches(matches: Any) -> str:
    if isinstance(matches, list):
        return ", ".join(f"`{item}`" for item in matches) or "nothing"
    return f"`{matches}`"
