"""The card's "Leak attribution" section, for a recipient's fingerprinted copy (`--recipient`).

It says that the copy carries a fingerprint, never whose (nothing in a release names its recipient),
what the fingerprint cost in fidelity as recorded in `unswift.json["fingerprint"]`, and in words only
what the trace survived on unswift's demo model: those figures are the demo model's, not this release's,
so the card shows none of them (they are in unswift's docs/BENCHMARKS.md, "Leak attribution").
"""

from __future__ import annotations

from typing import Any

from packager.publish.formatting import number, percent

#: What `unswift trace` named the right recipient after on the demo model, in words: only what that
#: benchmark measured and passed (docs/BENCHMARKS.md, "Leak attribution").
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


def section(fingerprint: dict[str, Any] | None) -> str:
    """The section (with its heading), or "" for a release that is no recipient's copy."""
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
