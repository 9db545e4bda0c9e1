"""`unswift audit`: run the known attacks and the leak scan on a release."""

from __future__ import annotations

import click

from packager.cli._app import common_options, main, reporting
from packager.cli._options import checked, checked_units


@main.command()
@click.argument("release", type=click.Path())
@click.option("--reference", default=None,
              help="The source checkpoint (folder or Hub id). Without it, recovered fractions and the leak "
                   "scan are null, and rebuilt models are compared with the release.")
@click.option("--secret-file", type=click.Path(), default=None,
              help="The release secret (or env UNSWIFT_SECRET): only checked against the release's "
                   "secret_id; no attack is given it.")
@click.option("--max-recovered", type=float, default=None, callback=checked,
              help="Exit 1 if any attack recovers more than this fraction of the protected weights "
                   "(needs --reference).")
@click.option("--attack", "attacks", multiple=True,
              type=click.Choice(["coefficient_ratio", "kerckhoffs", "learning", "truncation"]),
              help="Run only these attacks (repeatable). Default: all four (truncation runs last: it times the "
                   "kerckhoffs rebuild).")
@click.option("--learning-steps", type=int, default=300, show_default=True, callback=checked,
              help="Budget of the learning attack: Adam steps per attacked MLP.")
@click.option("--attacker-tokens", type=int, default=2048, show_default=True, callback=checked,
              help="Tokens of the attacker's own text run through the release to record MLP inputs and "
                   "outputs (learning attack, --kerckhoffs-data) and the truncation attacker's text.")
@click.option("--learning-units", default=None, callback=checked_units,
              help="MLP units the learning attack fits, e.g. '0,15'. Default: the middle one.")
@click.option("--kerckhoffs-data", is_flag=True,
              help="Give the kerckhoffs attacker MLP inputs recorded on its own text (default: no data).")
@click.option("--record", is_flag=True, help="Store the result in the release's unswift.json "
              "(removes model.sig: re-sign afterwards).")
@click.option("--export-rebuilt", type=click.Path(), default=None, metavar="DIR",
              help="Also write the strongest attack's rebuilt model as a plain transformers checkpoint of the "
                   "source's architecture (loads without remote code).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --export-rebuilt folder.")
@common_options
def audit(release, reference, secret_file, max_recovered, attacks, learning_steps, attacker_tokens,
          learning_units, kerckhoffs_data, record, export_rebuilt, overwrite, as_json, quiet, debug):
    """Attack a release with the known attacks and scan it for leaked source weights.

    Exit 0 whatever it finds, unless --max-recovered is given and an attack recovers more (exit 1).

    \b
      unswift audit releases/model --reference ./ckpt
      unswift audit releases/model --reference ./ckpt --max-recovered 0.01 --json
      unswift audit releases/model --reference ./ckpt --attack kerckhoffs --record
      unswift audit releases/model --reference ./ckpt --export-rebuilt rebuilt/   # what an attacker gets
    """
    with reporting("audit", as_json=as_json, quiet=quiet, debug=debug) as report:
        from packager import api

        budget = api.LearningBudget(steps=learning_steps, tokens=attacker_tokens, layers=learning_units)
        result = api.audit(release, reference=reference, secret_file=secret_file, max_recovered=max_recovered,
                           attacks=attacks or api.ATTACK_NAMES, learning=budget, kerckhoffs_data=kerckhoffs_data,
                           progress=report.say, export_rebuilt=export_rebuilt, overwrite=overwrite)
        if export_rebuilt is not None:
            report.update({"export_rebuilt": str(export_rebuilt)})
        report.update(result.to_json())
        if record:
            if api.record_measurement(release, "audit", result.to_json()):
                report.say("model.sig removed: the record changed; re-sign with `unswift sign`")
        if result.protected_param_fraction is not None:
            report.say(f"protected parameters: {result.protected_param_fraction:.4f} of the source's")
        if result.leaks is not None:
            found = sum(leak["count"] for leak in result.leaks)
            report.say(f"leak scan: {found} source vectors found in the release" if found else
                       "leak scan: clean")
