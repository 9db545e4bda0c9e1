"""The model card (README.md), rendered from the release record `unswift.json` and nothing else.

Every figure in the card is formatted from a value in the record (or a sum of recorded counts), never
measured again, so the card and the record cannot disagree, and every measured figure stands beside the hardware,
device and dtype it was measured on. Where the record has no measurement the card says so instead of
showing a number. The wording about protection is deliberately modest: TaylorMLP is reversible by
algebra, and the card quotes what the audit measured (what an attacker gets) rather than promising more.

The text lives in the package data `packager/publish/templates/model_card.md` (Python `string.Template`),
so an installed wheel renders cards too. This module builds the pieces that depend on the record and the
YAML header, which comes from huggingface_hub's `ModelCardData` so that the Hub reads it as it reads any
card; `measurements` writes the measured sections and their headlines, `formatting` each figure. The
per-unit recipe stays in `unswift.json`: the card shows a summary table of it.

Places kept for later additions: `measurements.SLOWDOWN_COLUMNS` (more columns per bench entry),
`runtimes` (the "Runs with" section) and `attribution` (the section of a recipient's fingerprinted copy).
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCardData

from packager.errors import UsageError
from packager.formats.atomic import write_text_atomic
from packager.formats.names import CARD, RECORD, SIGNATURE
from packager.formats.record import read_record
from packager.publish import attribution, measurements, runtimes
from packager.publish.formatting import byte_size, number, percent, text_source

#: The card template ships inside the package (package data), so an installed wheel renders cards too.
TEMPLATE = ("packager.publish", "templates/model_card.md")

@dataclass(frozen=True)
class CardResult:
    """What `card` did: the README, whether it changed, and whether a signature had to be dropped."""

    readme: Path
    signature_removed: bool
    changed: bool = True

    def to_json(self) -> dict[str, Any]:
        """The `card` JSON fields (docs/INTERFACE.md)."""
        return {"readme": str(self.readme), "changed": self.changed, "signature_removed": self.signature_removed}

    def message(self) -> str:
        """What to tell the user; after removing a signature, the command that restores one."""
        if not self.changed:
            return f"{self.readme} is up to date; nothing written" + (
                f", {self.readme.parent / SIGNATURE} kept" if (self.readme.parent / SIGNATURE).exists() else "")
        if not self.signature_removed:
            return f"wrote {self.readme}"
        folder = self.readme.parent
        return (
            f"wrote {self.readme}; removed {folder / SIGNATURE}, which no longer matched: "
            f"re-sign with: unswift sign {folder} --key KEY"
        )


def card(release_dir: str | os.PathLike[str]) -> CardResult:
    """(Re)write a release's README.md; drop a signature the new card would silently break.

    A card that renders byte for byte as the README already on disk is left alone, and so is `model.sig`:
    re-running `unswift card` on a signed, unchanged release keeps it signed.

    Args:
        release_dir: The release folder, holding `unswift.json`.

    Returns:
        The README path, whether it changed, and `signature_removed=True` when a `model.sig` was removed
        (the release then needs `unswift sign DIR --key KEY` again).

    Raises:
        UsageError: No release folder, or its `unswift.json` is missing or not a release record.
    """
    root = Path(release_dir)
    text = render(read_record(root))  # a bad record fails here, before the signature is touched
    readme = root / CARD
    if readme.is_file() and readme.read_bytes() == text.encode("utf-8"):
        return CardResult(readme, signature_removed=False, changed=False)
    signature = root / SIGNATURE
    removed = signature.exists()
    if removed:
        signature.unlink()
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
    repo = hub.get("repo") or PLACEHOLDER_REPO
    revision = hub.get("tag") or hub.get("revision") or PLACEHOLDER_TAG
    base_model = source.get("base_model")
    model_type = source.get("model_type") or transform.get("base_model_type")
    dtype = transform.get("dtype") or source.get("dtype") or "float32"
    template = string.Template(resources.files(TEMPLATE[0]).joinpath(TEMPLATE[1]).read_text(encoding="utf-8"))
    return template.substitute(
        yaml=_yaml_header(base_model, source.get("license"), model_type),
        title=f"{source.get('name') or repo.split('/')[-1]} (TaylorMLP release)",
        summary=_summary(base_model or source.get("name")),
        glance=_glance(record),
        what=_what(record),
        where_note=_where_note(hub),
        repo=repo,
        revision=revision,
        local_dir=f"./{repo.split('/')[-1]}",
        tokenizer_line=_tokenizer_line(record.get("payload") or {}, base_model),
        generate_lines=_generate_lines(record.get("payload") or {}),
        model_type=runtimes.model_type(record),
        dtype=dtype,
        memory=_memory(record.get("size") or {}, dtype),
        disk=_disk(record.get("size") or {}),
        transformers=record.get("transformers") or "unknown",
        runs_with=runtimes.runs_with(record, repo, revision),
        verify_intro=_verify_intro((record.get("signing") or {}).get("key_fingerprint")),
        public_key=PUBLIC_KEY,
        fidelity=measurements.fidelity(record.get("eval")),
        slowdown=measurements.slowdown(record),
        slowdowns=measurements.three_slowdowns(record),
        protection=measurements.protection(record.get("audit")),
        leak_attribution=attribution.section(record.get("fingerprint")),
        recipe=_recipe(transform, record.get("calibration")),
        tool_version=(record.get("tool") or {}).get("version", "unknown"),
        format_version=record.get("format_version", "unknown"),
        source_name=f"`{source.get('name') or base_model or 'an unnamed checkpoint'}`",
        limitations=_limitations(record),
    )


def headlines(record: dict[str, Any]) -> dict[str, str | None]:
    """One line each on fidelity, slowdown, protection and signing (None where nothing was recorded).

    The card's "At a glance" list, and what `packager.api.headlines` gives the demo's closing summary.
    """
    fingerprint = (record.get("signing") or {}).get("key_fingerprint")
    return {
        "fidelity": measurements.fidelity_headline(record.get("eval")),
        "slowdown": measurements.slowdown_headline(record),
        "protection": measurements.protection_headline(record.get("audit")),
        "signature": f"signed with the publisher's key, fingerprint {fingerprint}" if fingerprint else None,
    }


#: What the snippets show when the record does not name the Hub repo or tag (the card then says so).
PLACEHOLDER_REPO = "ORG/NAME"
PLACEHOLDER_TAG = "TAG"
#: The publisher's public key as `unswift keygen --out publisher.pem` names it.
PUBLIC_KEY = "publisher.pem.pub"

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


def _glance(record: dict[str, Any]) -> str:
    lines = headlines(record)
    labels = {"fidelity": "Fidelity", "slowdown": "Slowdown", "protection": "Protection", "signature": "Signature"}
    missing = {
        "fidelity": "not measured",
        "slowdown": "not measured",
        "protection": "not audited; assume the source MLP weights can be recovered",
        "signature": "not signed when this card was written",
    }
    glance = [f"- {labels[key]}: {line or missing[key]}." for key, line in lines.items()]
    return "\n".join([*glance, *_budget(record.get("budget"))])


def _budget(budget: dict[str, Any] | None) -> list[str]:
    """Which sample sizes produced the figures (`unswift release --budget`); nothing for a record without one."""
    if not isinstance(budget, dict) or not budget.get("name"):
        return []
    sizes = (f"{number(budget.get('calibration_tokens'))} calibration tokens, {number(budget.get('eval_tokens'))} "
             f"eval tokens, {number(budget.get('bench_steps'))} timed decode steps per model, a learning attack of "
             f"{number(budget.get('learning_steps'))} steps")
    if budget.get("sample_length"):
        sizes += f", sampled text in sequences of {number(budget['sample_length'])} tokens"
    if budget["name"] == "quick":
        return [f"- Budget: quick ({sizes}): a preview of the pipeline on small samples; the figures above are "
                "rougher than a full-size release's (`unswift release` without `--budget quick`)."]
    return [f"- Budget: {budget['name']} ({sizes})."]


def _what(record: dict[str, Any]) -> str:
    source, transform = record["source"], record["transform"]
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
    bullets = [_allocation(transform), _coverage(transform), f"Hardening: {_hardening(transform)}.",
               _recipient(record.get("fingerprint"))]
    return (
        f"The source is {link}" + (f" ({described})" if described else "") + ". In every MLP, the "
        "activation of the expanded channels is replaced by a polynomial in the normalised gate "
        f"pre-activation, of order {order}" + (f" ({basis})" if basis else "") + ", and the release "
        "stores the polynomial's coefficients multiplied into the down projection instead of the source's "
        "down-projection columns. Attention, embeddings, norms and the LM head are released as they are.\n\n"
        + "\n".join(f"- {bullet}" for bullet in bullets if bullet)
    )


def _allocation(transform: dict[str, Any]) -> str:
    """The series orders in one sentence: base order, boosted order and the share of channels boosted."""
    order = transform.get("order", "unknown")
    allocation = transform.get("allocation") or {}
    boosted, expanded = allocation.get("boosted_channels"), allocation.get("expanded_channels")
    if allocation.get("kind") == "boost" and isinstance(boosted, int) and isinstance(expanded, int) and expanded:
        return (
            f"Order: {order}, allocated: {number(boosted)} of the {number(expanded)} expanded channels (about "
            f"one in {number(order + 1) if isinstance(order, int) else 'N+1'}, those whose error drops most) "
            f"carry a polynomial of order {allocation.get('boost_order')} and the others order "
            f"{allocation.get('base_order')}, which reads the same bytes per token as order {order} everywhere."
        )
    return f"Order: {order}, in every expanded channel."


def _coverage(transform: dict[str, Any]) -> str:
    coverage = transform.get("coverage")
    if not isinstance(coverage, int | float):
        return "Coverage: not recorded."
    if coverage >= 1.0:
        return "Coverage: 100 %: every MLP intermediate channel is expanded."
    return (f"Coverage: {percent(coverage)} of the MLP intermediate channels are expanded; the others keep "
            "the source's activation, as in a plain MLP.")


def _hardening(transform: dict[str, Any]) -> str:
    hardening = transform.get("hardening") or {}
    if not hardening.get("enabled"):
        return "off"
    parts = [key for key in ("signs", "scales", "permutation") if hardening.get(key)]
    return f"on ({', '.join(parts)}, derived from the publisher's secret)" if parts else "on"


def _recipient(fingerprint: dict[str, Any] | None) -> str | None:
    """The one sentence about a recipient fingerprint (never whose), at the end of "What this is"."""
    if not fingerprint:
        return None
    return ("Leak attribution: this copy carries a recipient fingerprint; nothing unswift writes into it names "
            "the recipient (see \"Leak attribution\" below).")


def _where_note(hub: dict[str, Any]) -> str:
    """A note before the snippets when they show a placeholder instead of the repo or the tag."""
    if not hub.get("repo"):
        return (f"This card was written before the release was given a Hub repo: in the commands below, "
                f"replace `{PLACEHOLDER_REPO}` and `{PLACEHOLDER_TAG}` with the repo and the tag it is "
                "published under.\n\n")
    if not (hub.get("tag") or hub.get("revision")):
        return (f"This card was written before the release was tagged: in the commands below, replace "
                f"`{PLACEHOLDER_TAG}` with the tag or commit you verified.\n\n")
    return ""


def _tokenizer_line(payload: dict[str, Any], base_model: str | None) -> str:
    if payload and not any(Path(name).name.startswith("tokenizer") for name in payload):
        return f"# no tokenizer ships with this release; use the source's ({base_model or 'see above'})"
    return "tokenizer = AutoTokenizer.from_pretrained(repo, revision=revision, trust_remote_code=True)"


def _generate_lines(payload: dict[str, Any]) -> str:
    """Lines that answer one prompt: through the chat template when the release ships one."""
    names = {Path(name).name for name in payload}
    if payload and not any(name.startswith("tokenizer") for name in names):
        return ""
    if "chat_template.jinja" in names:
        prompt = ('messages = [{"role": "user", "content": "What is the capital of France?"}]\n'
                  "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, "
                  'return_tensors="pt", return_dict=True)\n')
    else:
        prompt = 'inputs = tokenizer("The capital of France is", return_tensors="pt")\n'
    return (prompt + "inputs = inputs.to(model.device)\n"
            "output = model.generate(**inputs, max_new_tokens=32, do_sample=False)\n"
            'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n')


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
        "Get the publisher's public key from the publisher, outside this repository (their website, or a "
        "separate keys repository): a key found next to the model proves nothing. The commands below call it "
        f"`{PUBLIC_KEY}`, the name `unswift keygen --out publisher.pem` gives it. Check that its fingerprint "
        f"is the one above: `unswift verify` prints it, and so does `sha256sum {PUBLIC_KEY}`."
    )


def _recipe(transform: dict[str, Any], calibration: dict[str, Any] | None) -> str:
    """The transform recipe as a short table; the per-unit details stay in `unswift.json`."""
    rows = [("series", ", ".join(part for part in (
        f"order {transform.get('order', 'unknown')}",
        f"{transform['basis']} basis" if transform.get("basis") else "",
        f"{transform['fit']} fit" if transform.get("fit") else "",
        f"{transform['extrapolation']} extrapolation" if transform.get("extrapolation") else "") if part))]
    allocation = transform.get("allocation") or {}
    if allocation.get("kind") == "boost":
        rows.append(("allocation", f"orders {allocation.get('base_order')} and {allocation.get('boost_order')} "
                                   f"({number(allocation.get('boosted_channels'))} channels at "
                                   f"{allocation.get('boost_order')})"))
    else:
        rows.append(("allocation", f"uniform, order {allocation.get('order', transform.get('order', 'unknown'))}"))
    units = [unit for unit in transform.get("layers") or [] if isinstance(unit, dict)]
    if units:
        channels = sum(int(unit.get("intermediate", 0)) for unit in units)
        expanded = sum(int(unit.get("expanded", 0)) for unit in units)
        coverage = transform.get("coverage")
        share = f" ({percent(coverage)})" if isinstance(coverage, int | float) else ""
        rows.append(("MLP units", f"{number(len(units))}, {number(channels)} intermediate channels in all"))
        rows.append(("expanded channels", f"{number(expanded)}{share}; {_spread(units, 'expanded')}"))
        boosted = [sum(g.get("channels", 0) for g in unit.get("groups") or []
                       if g.get("order") == allocation.get("boost_order")) for unit in units]
        if allocation.get("kind") == "boost":
            rows.append(("boosted channels", _spread([{"n": n} for n in boosted], "n")))
    rows.append(("hardening", _hardening(transform)
                 + (f", secret id `{transform['hardening']['secret_id']}`"
                    if (transform.get("hardening") or {}).get("secret_id") else "")))
    rows.append(("dtype", f"`{transform.get('dtype', 'unknown')}`"))
    if calibration:
        rows.append(("calibration", _calibration(calibration)))
    table = ["| | |", "| --- | --- |", *(f"| {name} | {value} |" for name, value in rows)]
    return "\n".join(table)


def _spread(units: list[dict[str, Any]], key: str) -> str:
    values = [int(unit.get(key, 0)) for unit in units]
    low, high = min(values), max(values)
    return f"{number(low)} in every unit" if low == high else f"{number(low)} to {number(high)} per unit"


def _calibration(calibration: dict[str, Any]) -> str:
    tokens = calibration.get("tokens")
    text = (f"{number(tokens)} tokens of " if isinstance(tokens, int) else "") + text_source(calibration.get("source"))
    held = calibration.get("heldout_tokens")
    outside = calibration.get("heldout_outside_fraction", calibration.get("outside_interval_fraction"))
    if isinstance(outside, int | float):
        text += (f"; {percent(outside)} of the gate pre-activations of "
                 + (f"{number(held)} held-out tokens" if isinstance(held, int) else "held-out text")
                 + " fell outside the calibrated intervals")
    return text


def _limitations(record: dict[str, Any]) -> str:
    transform = record["transform"]
    evaluation = record.get("eval") or {}
    calibration = record.get("calibration") or {}
    items = [
        "The release approximates the source model: its outputs differ from the source's (see the fidelity "
        "section), and differences grow where activations leave the calibrated intervals.",
        "The slowdown comes from the shipped loader; it is not enforced. Anyone who factors the coefficients "
        "can rebuild a plain MLP and run at the source's speed.",
        "Only runtimes that execute this repository's code run it (see \"Runs with\").",
    ]
    if transform.get("extrapolation") == "linear":
        outside = calibration.get("outside_interval_fraction", calibration.get("heldout_outside_fraction"))
        seen = (
            f" During calibration, {percent(outside)} of held-out gate pre-activations fell outside the intervals."
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
