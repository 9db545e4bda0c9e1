"""The model card (README.md), rendered from the release record `unswift.json` and nothing else.

Every figure in the card is formatted from a value in the record, never measured or derived again,
so the card and the record cannot disagree. Where the record has no measurement the card says so
instead of showing a number. The wording about protection is deliberately modest: TaylorMLP is
reversible by algebra, and the card quotes what the audit measured rather than promising more.

The text lives in the package data `packager/publish/templates/model_card.md` (Python `string.Template`),
so an installed wheel renders cards too. This module builds the pieces that depend on the record
(tables, conditional paragraphs) and the YAML header, which comes from huggingface_hub's `ModelCardData`
so that the Hub reads it as it reads any card; `formatting` writes each figure.
"""

from __future__ import annotations

import os
import string
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCardData

from packager.errors import UsageError
from packager.formats.atomic import write_text_atomic
from packager.formats.names import CARD, RECORD, SIGNATURE
from packager.formats.record import read_record
from packager.publish.formatting import byte_size, number, percent, seconds, times, yaml_block

#: The card template ships inside the package (package data), so an installed wheel renders cards too.
TEMPLATE = ("packager.publish", "templates/model_card.md")

#: How the card describes each attack the audit runs (docs/INTERFACE.md, `audit.attacks[].name`).
_ATTACKS = {
    "coefficient_ratio": "the published closed-form attack, which reads weights off coefficient ratios",
    "kerckhoffs": "an attacker who knows unswift's method but not the publisher's secret",
    "learning": "fitting a fast MLP to input/output pairs of the released one",
}


@dataclass(frozen=True)
class CardResult:
    """What `card` did: the README it wrote and whether it had to drop a signature."""

    readme: Path
    signature_removed: bool

    def to_json(self) -> dict[str, Any]:
        """The `card` JSON fields (docs/INTERFACE.md)."""
        return {"readme": str(self.readme), "signature_removed": self.signature_removed}

    def message(self) -> str:
        """What to tell the user; after removing a signature, the command that restores one."""
        if not self.signature_removed:
            return f"wrote {self.readme}"
        folder = self.readme.parent
        return (
            f"wrote {self.readme}; removed {folder / SIGNATURE}, which no longer matched: "
            f"re-sign with: unswift sign {folder} --key KEY"
        )


def card(release_dir: str | os.PathLike[str]) -> CardResult:
    """(Re)write a release's README.md; drop a signature the new card would silently break.

    Args:
        release_dir: The release folder, holding `unswift.json`.

    Returns:
        The README path, and `signature_removed=True` when a `model.sig` was removed (the release then
        needs `unswift sign DIR --key KEY` again).

    Raises:
        UsageError: No release folder, or its `unswift.json` is missing or not a release record.
    """
    root = Path(release_dir)
    text = render(read_record(root))  # a bad record fails here, before the signature is touched
    signature = root / SIGNATURE
    removed = signature.exists()
    if removed:
        signature.unlink()
    readme = root / CARD
    write_text_atomic(readme, text)
    return CardResult(readme, removed)


def write_readme(release_dir: str | os.PathLike[str]) -> Path:
    """Render README.md from the folder's `unswift.json` and write it atomically; `model.sig` is untouched.

    `seal` calls this between updating the record and signing; users call `card`, which also removes
    a signature that the new README would no longer match.

    Args:
        release_dir: The release folder, holding `unswift.json`.

    Returns:
        The path of README.md.

    Raises:
        UsageError: No release folder, or its `unswift.json` is missing or not a release record.
    """
    root = Path(release_dir)
    readme = root / CARD
    write_text_atomic(readme, render(read_record(root)))
    return readme


def render(record: dict[str, Any]) -> str:
    """The card's Markdown (YAML header included) for one release record.

    Args:
        record: The parsed `unswift.json` (docs/FORMAT.md).

    Returns:
        The README text.

    Raises:
        UsageError: The record lacks its `source` or `transform` section.
    """
    if not isinstance(record, dict):
        raise UsageError(f"{RECORD} does not hold a JSON object")
    for section in ("source", "transform"):
        if not isinstance(record.get(section), dict):
            raise UsageError(f"{RECORD} has no '{section}' section; it is not a release record")
    source, transform = record["source"], record["transform"]
    hub = record.get("hub") or {}
    repo = hub.get("repo") or "ORG/NAME"
    base_model = source.get("base_model")
    model_type = source.get("model_type") or transform.get("base_model_type")
    dtype = transform.get("dtype") or source.get("dtype") or "float32"
    template = string.Template(resources.files(TEMPLATE[0]).joinpath(TEMPLATE[1]).read_text(encoding="utf-8"))
    return template.substitute(
        yaml=_yaml_header(base_model, source.get("license"), model_type),
        title=f"{source.get('name') or repo.split('/')[-1]} (TaylorMLP release)",
        summary=_summary(base_model or source.get("name")),
        what=_what(source, transform),
        repo=repo,
        revision=hub.get("tag") or hub.get("revision") or "TAG",
        local_dir=f"./{repo.split('/')[-1]}",
        tokenizer_line=_tokenizer_line(record.get("payload") or {}, base_model),
        dtype=dtype,
        memory=_memory(record.get("size") or {}, dtype),
        disk=_disk(record.get("size") or {}),
        transformers=record.get("transformers") or "unknown",
        model_type=f"unswift_{model_type}" if model_type else "unswift_*",
        verify_intro=_verify_intro((record.get("signing") or {}).get("key_fingerprint")),
        fidelity=_fidelity(record.get("eval")),
        slowdown=_slowdown(record.get("bench")),
        protection=_protection(record.get("audit")),
        leak_attribution=_leak_attribution(record.get("fingerprint")),
        recipe=yaml_block(transform),
        calibration=_calibration(record.get("calibration")),
        tool_version=(record.get("tool") or {}).get("version", "unknown"),
        format_version=record.get("format_version", "unknown"),
        source_name=f"`{source.get('name') or base_model or 'an unnamed checkpoint'}`",
        limitations=_limitations(record),
    )


#: The fidelity table: label, `eval` key, formatter.
_EVAL_ROWS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("top-1 agreement (same next token as the source)", "top1_agreement", percent),
    ("KL(source ‖ release), nats per token", "kl_mean", number),
    ("perplexity of the source", "ppl_reference", number),
    ("perplexity of the release", "ppl_release", number),
    ("greedy match (prompts whose greedy continuation is identical)", "greedy_match", percent),
)


# ------------------------------------------------------------------------------------------- sections


def _yaml_header(base_model: str | None, license_id: str | None, model_type: str | None) -> str:
    tags = ["unswift", "taylormlp"] + ([model_type] if model_type else [])
    return ModelCardData(
        base_model=base_model or None,
        library_name="transformers",
        license=license_id or "other",
        tags=tags,
        pipeline_tag="text-generation",
    ).to_yaml()


def _summary(base: str | None) -> str:
    of = f" of `{base}`" if base else ""
    return (
        f'A TaylorMLP ("Taylor Unswift") release{of}, packaged with unswift. It loads with transformers '
        "and `trust_remote_code=True`, computes an approximation of the source model (see the fidelity "
        "measured below) and is meant to run slower with its own loader (see the slowdown measured below)."
    )


def _what(source: dict[str, Any], transform: dict[str, Any]) -> str:
    base = source.get("base_model")
    link = f"[{base}](https://huggingface.co/{base})" if base else f"`{source.get('name', 'the source')}`"
    described = ", ".join(
        f"`{value}`" for value in (source.get("architecture"), source.get("dtype")) if value
    )
    if isinstance(source.get("num_parameters"), int):
        described += f", {number(source['num_parameters'])} parameters"
    basis = ", ".join(f"{key} `{transform[key]}`" for key in ("basis", "fit", "extrapolation")
                      if key in transform)
    order = transform.get("order", "unknown")
    coverage = transform.get("coverage")
    coverage = percent(coverage) if isinstance(coverage, int | float) else "unknown"
    hardening = transform.get("hardening") or {}
    if hardening.get("enabled"):
        parts = [key for key in ("signs", "scales", "permutation") if hardening.get(key)]
        hardened = f"on ({', '.join(parts)}, derived from the publisher's secret)" if parts else "on"
    else:
        hardened = "off"
    return (
        f"The source is {link}" + (f" ({described})" if described else "") + ". In every MLP, the "
        "activation of the expanded channels is replaced by a polynomial in the normalised gate "
        f"pre-activation, of order {order}" + (f" ({basis})" if basis else "") + ", and the release "
        "stores the polynomial's coefficients multiplied into the down projection instead of the source's "
        "down-projection columns. Attention, embeddings, norms and the LM head are released as they are.\n\n"
        f"- Order: {order}\n"
        f"- Coverage: {coverage} of the MLP intermediate channels are expanded; the others stay a plain MLP\n"
        f"- Hardening: {hardened}"
    )


def _tokenizer_line(payload: dict[str, Any], base_model: str | None) -> str:
    if payload and not any(Path(name).name.startswith("tokenizer") for name in payload):
        return f"# no tokenizer ships with this release; use the source's ({base_model or 'see above'})"
    return "tokenizer = AutoTokenizer.from_pretrained(repo, revision=revision)"


def _memory(size: dict[str, Any], dtype: str) -> str:
    weights = size.get("memory_bytes") or size.get("release_bytes")
    if not weights:
        return "not recorded."
    return (
        f"about {byte_size(weights)} for the weights as stored ({dtype}), plus activations and the KV cache, "
        "which grow with batch size and context length."
    )


def _disk(size: dict[str, Any]) -> str:
    if not size.get("release_bytes"):
        return "not recorded."
    source = f" (the source checkpoint: {byte_size(size['source_bytes'])})" if size.get("source_bytes") else ""
    return f"{byte_size(size['release_bytes'])} of release files{source}."


def _verify_intro(fingerprint: str | None) -> str:
    if not fingerprint:
        return (
            "This release was not signed when this card was written: its record names no key fingerprint. "
            "Do not use it before the publisher signs it and publishes the key's fingerprint here."
        )
    return (
        "Every file of this release is listed with its SHA-256 in `model.sig`, an OpenSSF model-signing "
        "signature made with the publisher's ECDSA key. The key's fingerprint (the SHA-256 of its PEM "
        f"public key) is:\n\n    {fingerprint}\n\n"
        "Get the publisher's public key (`publisher.pub`) from the publisher, outside this repository "
        "(their website, or a separate keys repository): a key found next to the model proves nothing. "
        "Check that its fingerprint is the one above: `unswift verify` prints it, and so does "
        "`sha256sum publisher.pub` for the PEM file `unswift keygen` writes."
    )


def _fidelity(evaluation: dict[str, Any] | None) -> str:
    if not evaluation:
        return "Not measured: `unswift eval` was not run on this release, so no fidelity figure is shown."
    floor = evaluation.get("noise_floor")
    tokens = evaluation.get("eval_tokens")
    text = f" of {evaluation['text_source']} text" if evaluation.get("text_source") else ""
    lines = [
        _command_line(evaluation, "unswift eval RELEASE --reference SOURCE")
        + f" Both models read the same {number(tokens) + ' ' if tokens is not None else ''}tokens{text}, "
        "teacher-forced. The noise floor is the same metric for the source computed a second, "
        "mathematically identical way: differences below it are numerical noise.",
        "",
        "| metric | release vs source | noise floor |",
        "| --- | --- | --- |",
    ]
    for label, key, fmt in _EVAL_ROWS:
        if key not in evaluation:
            continue
        noise = floor.get(key) if isinstance(floor, dict) else None
        shown = fmt(noise) if noise is not None else "—"
        value = fmt(evaluation[key])
        if key == "greedy_match" and evaluation[key] is None:
            value = "not measured (no tokenizer)"
        lines.append(f"| {label} | {value} | {shown} |")
    if isinstance(floor, int | float) and not isinstance(floor, bool):
        lines.append(f"\nNoise floor: {number(floor)}.")
    return "\n".join(lines)


def _slowdown(bench: list[dict[str, Any]] | dict[str, Any] | None) -> str:
    bench = [bench] if isinstance(bench, dict) else bench  # one entry written without its list
    if not bench:
        return "Not measured: `unswift bench` was not run on this release, so no slowdown figure is shown."
    lines = [
        _command_line(bench[0], "unswift bench RELEASE --reference SOURCE")
        + " Slowdown is the median time per token of the release divided by the source's, measured in "
        "interleaved runs; the predicted decode slowdown is the ratio of bytes of weights read per decoded "
        "token. It holds for the shipped loader only.",
        "",
        "| device | dtype | batch | decode slowdown | prefill slowdown | predicted decode slowdown |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for entry in bench:
        lines.append(
            f"| {entry.get('device', '?')} | {entry.get('dtype', '?')} | {entry.get('batch', '?')} | "
            f"{times(entry.get('decode_slowdown'))} | {times(entry.get('prefill_slowdown'))} | "
            f"{times(entry.get('predicted_decode_slowdown'))} |"
        )
    return "\n".join(lines)


def _protection(audit: dict[str, Any] | None) -> str:
    caution = (
        "TaylorMLP is reversible by algebra: anyone who knows the method can compute the source model's "
        "MLP weights from the released coefficients, and a published attack does so without any data. "
        "Hardening raises the cost for an attacker who lacks the publisher's secret; it does not make the "
        "release a way to keep the weights private."
    )
    if not audit:
        return (
            f"This release was not audited: `unswift audit` was not run on it, so no attack figure is shown. "
            f"{caution} Assume that the source MLP weights can be recovered from this release."
        )
    lines = [caution, "", _command_line(audit, "unswift audit RELEASE --reference SOURCE") + " It found:", ""]
    if audit.get("protected_param_fraction") is not None:
        lines.append(
            f"- Protected parameters: {percent(audit['protected_param_fraction'])} of the source's parameters "
            "do not appear in the release as they are (exactly, or up to sign and permutation); the others "
            "do."
        )
    for attack in audit.get("attacks") or []:
        name = attack.get("name", "unnamed")
        rebuilt = attack.get("rebuilt_top1")
        lines.append(
            f"- Attack `{name}` ({_ATTACKS.get(name, 'an attack the audit ran')}): recovered "
            f"{percent(attack.get('recovered_fraction'))} of the attacked weights' elements to within one "
            f"percent relative error (overall relative error {number(attack.get('relative_error'))}) in "
            f"{seconds(attack.get('seconds'))}"
            + (
                f" ({percent(attack['recovered_fraction_up_to_scale'])} once each channel's secret scale, which "
                "does not change what the model computes, is set aside)"
                if attack.get("recovered_fraction_up_to_scale") is not None
                else ""
            )
            + "; "
            + (
                f"a model rebuilt from what it recovered gives the same next token as the source "
                f"{percent(rebuilt)} of the time"
                + (f" (the release itself: {percent(audit['release_top1'])})."
                   if audit.get("release_top1") is not None else ".")
                if rebuilt is not None
                else "no model was rebuilt from it."
            )
        )
    leaks = audit.get("leaks")
    if leaks:
        found = "; ".join(f"`{leak.get('tensor')}` matches {_matches(leak.get('matches'))}" for leak in leaks)
        lines.append(f"- Leak scan: released tensors that equal source tensors: {found}.")
    elif leaks is not None:
        lines.append("- Leak scan: no released tensor equals a source tensor it should hide.")
    return "\n".join(lines)


#: What `unswift trace` named the right recipient after, on the demo model (docs/BENCHMARKS.md, "Leak
#: attribution"): only what that benchmark measured and passed; the card shows no figure of it, because
#: its figures are the demo model's, not this release's.
TRACE_SURVIVED_ON_DEMO: tuple[str, ...] = (
    "the release as shipped, or with its config's provenance fields and its record removed",
    "the plain model an attacker rebuilds from it",
    "that model reparametrised (residual rotation, head permutations, value/output mixing, rotary and MLP "
    "channel changes, all at once)",
    "a bfloat16 cast",
    "int8 quantisation",
    "4-bit GGUF quantisation (Q4_0)",
    "LoRA fine-tuning (rank 16, 200 steps) merged",
    "full fine-tuning (200 steps)",
    "20 % magnitude pruning",
    "the average of two or of three recipients' copies (each of them named)",
)


def _leak_attribution(fingerprint: dict[str, Any] | None) -> str:
    """The section of a recipient's fingerprinted copy: that it carries one (never whose) and its cost."""
    if not fingerprint:
        return ""
    cost = fingerprint.get("source_fidelity") or {}
    measured = (
        f" Its cost, measured before conversion (the fingerprinted source against the source, float32, "
        f"teacher-forced, {cost.get('tokens', '?')} tokens of held-out text): top-1 agreement "
        f"{percent(cost.get('top1'))}, KL {number(cost.get('kl'))} nats per token. The fidelity above is "
        "this release's, fingerprint included."
        if cost else " Its fidelity cost was not recorded."
    )
    survived = (
        " On unswift's demo model (not this one; the figures are in unswift's docs/BENCHMARKS.md) the trace "
        "named the right recipient at a corrected false-accusation probability of at most 1e-9 after each of: "
        + "; ".join(TRACE_SURVIVED_ON_DEMO) + "."
        if TRACE_SURVIVED_ON_DEMO else ""
    )
    return (
        "\n\n## Leak attribution\n\n"
        "This copy carries a recipient fingerprint: secret-keyed weight changes, different for every recipient "
        "the publisher gave a copy to, from which the publisher (who keeps the secret and a ledger of "
        "recipients) can tell which recipient's copy a model found elsewhere derives from (`unswift trace`). "
        "Nothing unswift writes into this release names its recipient (the publisher's ledger does; the "
        "repository's name is the publisher's choice)." + measured + survived
        + " Training a new model on this model's outputs (distillation) does not keep the fingerprint, and "
        "noise large enough to drown it costs fidelity; a trace names a recipient's copy, not who leaked it."
    )


def _matches(matches: Any) -> str:
    if isinstance(matches, list):
        return ", ".join(f"`{item}`" for item in matches) or "nothing"
    return f"`{matches}`"


def _command_line(section: dict[str, Any], default: str) -> str:
    """The sentence saying which command produced a section's figures (the recorded one if present)."""
    return f"Measured by `{section.get('command') or default}`."


def _calibration(calibration: dict[str, Any] | None) -> str:
    if not calibration:
        return "No calibration summary is recorded."
    return (
        "The calibration that set the expansion intervals (`calibration` in `unswift.json`):\n\n"
        f"```yaml\n{yaml_block(calibration, compact=False)}\n```"
    )


def _limitations(record: dict[str, Any]) -> str:
    transform = record["transform"]
    evaluation = record.get("eval") or {}
    calibration = record.get("calibration") or {}
    items = [
        "The release approximates the source model: its outputs differ from the source's (see the fidelity "
        "section), and differences grow where activations leave the calibrated intervals.",
        "The slowdown comes from the shipped loader; it is not enforced. Anyone who factors the coefficients "
        "can rebuild a plain MLP and run at the source's speed.",
        "Only runtimes that execute this repository's code run it (see above).",
    ]
    if transform.get("extrapolation") == "linear":
        outside = calibration.get("outside_interval_fraction")
        seen = (
            f" During calibration, {percent(outside)} of gate pre-activations fell outside the intervals."
            if isinstance(outside, int | float)
            else ""
        )
        items.append(
            "Outside the calibrated interval each polynomial is continued linearly, which approximates "
            f"the activation less closely there.{seen}"
        )
    if evaluation.get("calibration_overlap"):
        items.append(
            "The evaluation text overlapped the calibration text, so the fidelity figures may be optimistic."
        )
    if record.get("eval") and evaluation.get("greedy_match", 0) is None:
        items.append("Greedy match was not measured because the checkpoint had no tokenizer.")
    license_id = record["source"].get("license")
    items.append(
        f"The source's licence (`{license_id}`) applies to this release."
        if license_id
        else "The source's licence is not recorded; check it before use."
    )
    return "\n".join(f"- {item}" for item in items)
