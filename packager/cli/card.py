"""`unswift card`: (re)write a release's model card from its record."""

from __future__ import annotations

import click

from packager.cli._app import common_options, main, reporting


@main.command("card")
@click.argument("release", type=click.Path(file_okay=False))
@common_options
def card_command(release: str, as_json: bool, quiet: bool, debug: bool) -> None:
    """(Re)write RELEASE/README.md from the packaged card template and RELEASE/unswift.json.

    Every figure in the card comes from unswift.json. A card that comes out exactly as the README already
    there is not rewritten, and model.sig is kept. Otherwise, on a signed release, the old model.sig no
    longer matches the new README, so it is removed and the command says so: sign again afterwards.
    JSON fields: readme, changed, signature_removed.

    \b
    Examples:
      unswift card releases/model
      unswift card releases/model && unswift sign releases/model --key publisher.pem
    """
    with reporting("card", as_json=as_json, quiet=quiet, debug=debug) as report:
        from packager import api

        result = api.card(release)
        report.update(result.to_json())
        if result.signature_removed:  # shown even with --quiet: the release is now unsigned
            click.echo(f"warning: {result.message()}", err=True)
        else:
            report.say(result.message())
