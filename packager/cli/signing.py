"""`unswift keygen`, `unswift sign` and `unswift verify`: thin wrappers over `packager.publish.signing`.

Keys are never read from prompts and never printed: the signing key comes from `--key` or
`UNSWIFT_SIGNING_KEY`, and only its fingerprint is shown.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import click

from packager import api
from packager.api import CheckFailed, UsageError
from packager.cli._app import common_options, main, reporting


@main.command("keygen")
@click.option("--out", required=True, type=click.Path(dir_okay=False), metavar="KEY",
              help="Private key file to write (PEM, mode 0600); the public key goes to KEY.pub.")
@click.option("--curve", type=click.Choice(list(api.CURVES)), default="P-256", show_default=True,
              help="ECDSA curve; P-256 with SHA-256 is what model_signing and most tools expect.")
@click.option("--overwrite", is_flag=True, help="Replace existing key files (the old key is lost).")
@common_options
def keygen_command(out: str, curve: str, overwrite: bool, as_json: bool, quiet: bool, debug: bool) -> None:
    """Create a publisher key pair: KEY (private, mode 0600) and KEY.pub; print the key fingerprint.

    Keep KEY out of every release folder and out of version control (a CI secret is a good home; pass it
    with --key or UNSWIFT_SIGNING_KEY). Publish KEY.pub outside the model repo, e.g. on your website;
    every card shows the fingerprint, so users can check they hold the right key (docs/SIGNING.md).

    \b
    Examples:
      unswift keygen --out ~/.config/unswift/publisher.pem
      unswift keygen --out ci/publisher.pem --curve P-384 --json
    """
    with reporting("keygen", as_json=as_json, quiet=quiet, debug=debug) as report:
        pair = api.keygen(out, curve=curve, overwrite=overwrite)
        report.update(pair.to_json())
        report.say(f"wrote private key {pair.private_key} (mode 0600: keep it secret, outside any release)")
        report.say(f"wrote public key  {pair.public_key} (publish it outside the model repo)")
        report.say(f"key fingerprint: {pair.key_fingerprint}")


@main.command("sign")
@click.argument("release", type=click.Path(file_okay=False))
@click.option("--key", default=None, metavar="KEY",
              help=f"Private key (PEM) from `unswift keygen`. Default: env {api.KEY_ENV}, a path to the "
                   "PEM or the PEM text itself.")
@common_options
def sign_command(release: str, key: str | None, as_json: bool, quiet: bool, debug: bool) -> None:
    """Sign RELEASE: record the payload digests and key fingerprint, re-render the card, write model.sig.

    model.sig (OpenSSF model-signing v1.0) covers every other file and is written last; anyone can
    check it with `unswift verify` or `model_signing verify key`.

    \b
    Examples:
      unswift sign releases/model --key ~/.config/unswift/publisher.pem
      UNSWIFT_SIGNING_KEY="$(cat publisher.pem)" unswift sign releases/model --json
    """
    with reporting("sign", as_json=as_json, quiet=quiet, debug=debug) as report:
        key_path = key or _env_key_path()
        if key_path is not None and _readable_by_others(key_path):
            report.say(f"warning: signing key '{key_path}' is readable by other users; chmod 600 it")
        result = api.sign(release, key)
        report.update(result.to_json())
        report.say(f"signed {len(result.files)} files of {result.release_dir} into {result.signature}")
        report.say(f"key fingerprint: {result.key_fingerprint}")


@main.command("verify")
@click.argument("target", metavar="RELEASE_DIR_OR_REPO")
@click.option("--key", default=None, type=click.Path(dir_okay=False), metavar="KEY.pub",
              help="The publisher's public key (PEM); its fingerprint must match the one in the card.")
@click.option("--revision", default=None, metavar="REV",
              help="With a repo id: the tag, branch or commit to check (pin the tag you load).")
@click.option("--endpoint", default=None, metavar="URL", help="Self-hosted hub URL (default: HF_ENDPOINT).")
@common_options
def verify_command(target: str, key: str | None, revision: str | None, endpoint: str | None,
                   as_json: bool, quiet: bool, debug: bool) -> None:
    """Check model.sig with the publisher's key and every file against it (a folder or a Hub repo).

    Names each missing, extra or altered file. Hub cache snapshots (symlinks) and --local-dir downloads
    (.cache/huggingface/) are handled.

    \b
    Examples:
      unswift verify org/model --revision v1 --key publisher.pem.pub
      unswift verify ./downloads/model --key publisher.pem.pub --json

    \b
    Exit codes: 0 verified, 1 a file or the signature does not match, 2 bad input (e.g. no --key),
    3 the Hub could not be reached (re-run).
    """
    with reporting("verify", as_json=as_json, quiet=quiet, debug=debug) as report:
        local = Path(target).exists()
        if not local and not api.looks_like_repo_id(target):
            raise UsageError(
                f"'{target}' is neither an existing release folder nor a Hub repo id ORG/NAME",
                hint="pass the folder of a downloaded release, or a repo id such as my-org/model",
            )
        if key is None:
            raise UsageError(
                "no public key: pass the publisher's key with --key KEY.pub" + _card_fingerprint(target),
                hint="publishers distribute the public key outside the model repo (their website or a keys "
                "repository); the model card's 'How to verify it' section shows its fingerprint",
            )
        result = api.verify(target, key, revision=revision, endpoint=endpoint, progress=report.say)
        report.update(result.to_json())
        if not result.verified:
            raise CheckFailed(
                f"verification failed for '{target}': {result.describe_mismatch()}",
                hint="do not load these files; download the release again or ask the publisher",
                details=result.to_json(),
            )
        report.say(f"verified: all {len(result.files)} files of '{target}' match model.sig")
        report.say(f"signed by key fingerprint {result.key_fingerprint}; compare it with the card")


def _env_key_path() -> str | None:
    """The key file named by UNSWIFT_SIGNING_KEY, if it names a file rather than holding PEM text."""
    value = os.environ.get(api.KEY_ENV, "").strip()
    return value if value and not value.startswith("-----BEGIN") and Path(value).is_file() else None


def _readable_by_others(path: str) -> bool:
    try:
        return bool(Path(path).stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False  # signing reports a missing key itself


def _card_fingerprint(target: str) -> str:
    """For a local release, the fingerprint its record names, so the user knows which key to look for."""
    fingerprint = api.recorded_key_fingerprint(target) if Path(target).is_dir() else None
    return f"; this release names key fingerprint {fingerprint}" if fingerprint else ""
