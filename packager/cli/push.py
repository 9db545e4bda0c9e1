"""`unswift push`: one atomic commit of a release folder to a Hub repo, then a tag.

`packager.publish.hub` (and with it `huggingface_hub`) is imported inside the command, after `--endpoint` and
`--no-xet` have been exported as `HF_ENDPOINT` / `HF_HUB_DISABLE_XET`, so that everything
`huggingface_hub` reads at import time (Trusted Publishers token exchange, caches) sees them too. The
same values are also passed to `push()` explicitly, which matters when `huggingface_hub` was already
imported by another command module.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import click

from packager.cli._app import common_options, main, reporting


@main.command("push")
@click.argument("release", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--repo", "repo_id", required=True, metavar="ORG/NAME", help="Hub model repo (created if missing)."
)
@click.option(
    "--tag",
    default=None,
    help="Tag to create on the release commit. Default: v<unswift version from unswift.json>-<first 8 hex "
    "of the SHA-256 over the sorted '<path> <sha256>' lines of every pushed file>, so a re-run reuses it.",
)
@click.option(
    "--private/--public",
    "private",
    default=True,
    show_default=True,
    help="Visibility. A public repo is refused unless --public is given; --public makes a private repo "
    "public only after the release is tagged.",
)
@click.option(
    "--gated",
    type=click.Choice(["auto", "manual"]),
    default=None,
    help="Turn on access requests (approved automatically or by hand).",
)
@click.option("--endpoint", default=None, metavar="URL", help="Self-hosted hub URL (default: HF_ENDPOINT).")
@click.option("--revision", default=None, metavar="BRANCH", help="Branch to commit to (default: main).")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing; no tag is made.")
@click.option("--no-xet", is_flag=True, help="Upload with Git LFS even though hf_xet is installed.")
@click.option("--allow-unsigned", is_flag=True, help="Push a release that has no model.sig.")
@click.option("--commit-message", default=None, metavar="M", help="Commit title (default: 'Release <tag>').")
@common_options
def push_command(
    release: str,
    repo_id: str,
    tag: str | None,
    private: bool,
    gated: str | None,
    endpoint: str | None,
    revision: str | None,
    create_pr: bool,
    no_xet: bool,
    allow_unsigned: bool,
    commit_message: str | None,
    as_json: bool,
    quiet: bool,
    debug: bool,
) -> None:
    """Push RELEASE to the Hub in ONE atomic commit (stale remote files deleted), then tag that commit.

    Re-running after any failure finishes the job: no file is uploaded twice, no duplicate commit is
    made, and the tag only ever points at a complete release. Token: HF_TOKEN, Trusted Publishers
    (HF_OIDC_RESOURCE in CI) or `hf auth login`; never a prompt.

    \b
    Examples:
      unswift push releases/model --repo my-org/model --tag v1
      unswift push releases/model --repo my-org/model --gated manual --json
      unswift push releases/model --repo me/model --endpoint https://hub.example.org --no-xet
    Users then load it with:
      AutoModelForCausalLM.from_pretrained("my-org/model", revision="v1", trust_remote_code=True)

    \b
    Exit codes: 0 pushed (or already there), 1 the new commit does not hold exactly the release, 2 bad input
    (nothing pushed), 3 network/Hub error (re-run).
    """
    env = {"HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1" if no_xet else None}
    with reporting("push", as_json=as_json, quiet=quiet, debug=debug) as report, _exported(env):
        from packager import api

        result = api.push(
            release,
            repo_id,
            tag=tag,
            private=private,
            public=not private,
            gated=gated,
            endpoint=endpoint,
            revision=revision,
            create_pr=create_pr,
            no_xet=no_xet,
            commit_message=commit_message,
            allow_unsigned=allow_unsigned,
            show_progress=report.show_progress,
            progress=report.say,
        )
        report.update(result.to_json())
        what = "pushed" if result.new_commit else "already on the Hub"
        where = f"tag '{result.tag}'" if result.tag else (result.pr_url or result.revision)
        report.say(f"{what}: {result.url} at {where} (commit {result.revision[:12]})")


@contextlib.contextmanager
def _exported(values: dict[str, str | None]) -> Iterator[None]:
    """Export the given variables (None = leave alone) for the command's duration, then restore them."""
    saved = {name: os.environ.get(name) for name, value in values.items() if value is not None}
    for name in saved:
        os.environ[name] = values[name]  # type: ignore[assignment]
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
