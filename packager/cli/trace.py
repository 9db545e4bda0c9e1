"""`unswift trace`: which recipient's fingerprinted copy a suspect model derives from."""

from __future__ import annotations

import click

from packager.cli._app import common_options, main, reporting


@main.command()
@click.argument("suspect")
@click.option("--reference", required=True, help="The source checkpoint the releases were converted from "
              "(folder or Hub id), unchanged.")
@click.option("--ledger", required=True, type=click.Path(), help="The publisher's ledger (JSON Lines).")
@click.option("--secret-file", type=click.Path(), default=None,
              help="The publisher's secret (or env UNSWIFT_SECRET). Default: the .secret file beside the ledger.")
@click.option("--revision", default=None, help="Revision of a Hub repo id SUSPECT (tag, branch or commit).")
@click.option("--endpoint", default=None, metavar="URL", help="Self-hosted hub URL (default: HF_ENDPOINT).")
@common_options
def trace(suspect, reference, ledger, secret_file, revision, endpoint, as_json, quiet, debug):
    """Name the recipient whose copy SUSPECT derives from: a release folder, a plain safetensors folder,
    a GGUF file or a Hub repo id.

    Reads tensors only (never a pickle, never the suspect's code), aligns SUSPECT to the reference up to
    the reparametrisations laundering tools use, and scores every recipient the ledger lists for this
    reference. Exit 0 when a recipient is identified at p <= 1e-9 after the Sidak correction over the
    ledger's recipients, 1 when none is, 2 on bad input (nothing is written).

    \b
      unswift trace ./leaked --reference ./ckpt --ledger ledger.jsonl
      unswift trace leaked.Q4_0.gguf --reference ./ckpt --ledger ledger.jsonl --json
      unswift trace someone/reupload --revision main --reference ./ckpt --ledger ledger.jsonl
    """
    with reporting("trace", as_json=as_json, quiet=quiet, debug=debug) as report:
        from packager import api

        result = api.trace(suspect, reference=reference, ledger=ledger, secret_file=secret_file, revision=revision,
                           endpoint=endpoint, progress=report.say)
        report.update(result.to_json())
        fields = result.to_json()
        for entry in fields["recipients"][:5]:
            report.say(f"  {entry['name']}: z {entry['z']:.2f}, corrected p 10^{entry['log10_p_value']:.1f}")
        derived = "derives" if fields["derived_from_reference"] else "does not derive"
        report.say(f"the suspect {derived} from the reference (score {fields['derived_score']:.3f})")
        if result.identified is None:
            raise api.CheckFailed("no recipient identified at p <= 1e-9 (after the Sidak correction)")
        others = [n for n in fields["identified_all"] if n != result.identified]
        report.say(f"identified: {result.identified}" + (f" (also: {', '.join(others)})" if others else ""))
