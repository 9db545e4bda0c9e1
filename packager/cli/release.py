"""`release`: the whole pipeline in one command, resumable, with a --json summary."""

from __future__ import annotations

import click
from click.core import ParameterSource

from packager.cli._app import common_options, main, reporting
from packager.cli._options import (
    build_convert_options,
    checked,
    convert_options,
    dry_run_requested,
    fingerprint_request,
    report_plan,
)
from packager.cli.push import _exported


@main.command()
@click.argument("checkpoint")
@click.option("--repo", default=None, metavar="ORG/NAME", help="Hub model repo to publish to.")
@click.option("--out", type=click.Path(), default=None, help="Release folder. Default: ./releases/<name>.")
@click.option("--no-push", is_flag=True, help="Stop after signing; nothing is sent to the Hub (--repo and --tag "
              "still name the release in its card).")
@click.option("--key", type=click.Path(), default=None,
              help="Signing key (PEM, ECDSA P-256/384/521) or env UNSWIFT_SIGNING_KEY. Required to push.")
@click.option("--tag", default=None, help="Tag of the release commit. Default: unswift-<inputs digest>.")
@click.option("--private/--public", "private", default=True, show_default=True,
              help="Repo visibility; an existing public repo is refused unless --public.")
@click.option("--gated", type=click.Choice(["auto", "manual"]), default=None, help="Access requests.")
@click.option("--endpoint", default=None, metavar="URL", help="Self-hosted hub URL (default: HF_ENDPOINT).")
@click.option("--revision", default=None, metavar="BRANCH", help="Branch to commit to (default: main).")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing.")
@click.option("--no-xet", is_flag=True, help="Upload with Git LFS even though hf_xet is installed.")
@click.option("--max-kl", type=float, default=None, callback=checked,
              help="Stop before pushing (exit 1) if mean KL is above this.")
@click.option("--eval-tokens", type=int, default=None, callback=checked,
              help="Teacher-forced tokens of the fidelity eval. Default: 8192 (--budget quick: 1024).")
@click.option("--budget", type=click.Choice(["full", "quick"]), default="full", show_default=True,
              help="Size of every measurement: 'quick' previews the whole pipeline on smaller samples "
              "(calibration 4,096 tokens, eval 2,048, bench 8 steps, learning attack 60 steps); the record "
              "and the card name the budget. --calibration-tokens and --eval-tokens, when given, win.")
@click.option("--bench/--no-bench", default=True, show_default=True,
              help="Measure the slowdown against the source on this machine.")
@click.option("--audit/--no-audit", default=True, show_default=True, help="Run the protection audit.")
@click.option("--recipients", "recipients", type=click.Path(), default=None, metavar="FILE",
              help="One fingerprinted release per line `NAME REPO` of FILE, each in OUT/NAME and pushed to its "
                   "REPO (instead of --repo), all converted from one calibration; see --recipient.")
@convert_options
@common_options
def release(checkpoint, repo, out, no_push, key, tag, private, gated, endpoint, revision, create_pr, no_xet,
            max_kl, eval_tokens, budget, bench, audit, recipients, order, coverage, fit, allocation, min_top1,
            calibration,
            calibration_tokens, calibration_seed, stats, hardening, secret_file, dtype, license_, base_model, overwrite,
            as_json, quiet, debug):
    """Calibrate, convert, evaluate, bench, audit, card, sign and push, in one resumable command.

    \b
      unswift release ./ckpt --repo my-org/model --key publisher.pem --tag v1
      unswift release ./ckpt --repo my-org/model --no-push --key publisher.pem   # local, signed
      unswift release ./ckpt --repo my-org/model --min-top1 0.995 --max-kl 0.005 --json   # CI
      unswift release ./ckpt --recipients partners.txt --ledger ledger.jsonl --key publisher.pem
    A re-run with the same inputs resumes: finished stages are skipped, the push is idempotent.
    Thresholds (--min-top1, --max-kl) stop the run before pushing, with exit code 1.
    """
    if recipients is not None and repo is not None:
        raise click.UsageError("--recipients names each recipient's repo: drop --repo")
    if repo is None and recipients is None and not no_push and not dry_run_requested():
        raise click.UsageError("pass --repo ORG/NAME, or --no-push to stop before publishing")
    env = {"HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1" if no_xet else None}
    with reporting("release", as_json=as_json, quiet=quiet, debug=debug) as report, _exported(env):
        from packager import api

        options = build_convert_options(order, coverage, fit, min_top1, hardening, dtype, license_, base_model,
                                        allocation, allow_dry_run=True)
        if dry_run_requested():  # the plan only: no key, secret, folder or Hub call is touched
            report_plan(report, api.open_source(checkpoint), options, stats=stats)
            return
        if click.get_current_context().get_parameter_source("calibration_tokens") is ParameterSource.DEFAULT:
            calibration_tokens = None  # the budget's
        recipient, ledger = fingerprint_request(listed=recipients is not None)
        if recipients is not None:
            if recipient is not None:
                raise api.UsageError("--recipients lists the recipients: drop --recipient")
            publish = api.PublishOptions(repo="-", tag=tag, private=private, gated=gated,  # "-": each line's repo
                                         endpoint=endpoint, revision=revision, create_pr=create_pr, no_xet=no_xet,
                                         push=not no_push)
            results = api.release_recipients(
                checkpoint, recipients, out=out, options=options, publish=publish, key=key, ledger=ledger,
                calibration=calibration, calibration_tokens=calibration_tokens, calibration_seed=calibration_seed,
                stats=stats, secret_file=secret_file, min_top1=min_top1, max_kl=max_kl, overwrite=overwrite,
                eval_tokens=eval_tokens, bench=bench, audit=audit, budget=budget, progress=report.say,
                show_progress=report.show_progress)
            report.update({"releases": [r.to_json() for r in results]})
            for result in results:
                report.say(f"{result.release_dir}: " + ", ".join(f"{k} {v}" for k, v in result.stages.items()))
            return
        publish = api.PublishOptions(repo=repo, tag=tag, private=private, gated=gated, endpoint=endpoint,
                                     revision=revision, create_pr=create_pr, no_xet=no_xet, push=not no_push)
        result = api.release(checkpoint, out=out, options=options, publish=publish, key=key,
                             calibration=calibration, calibration_tokens=calibration_tokens,
                             calibration_seed=calibration_seed, stats=stats, secret_file=secret_file,
                             min_top1=min_top1, max_kl=max_kl, overwrite=overwrite, eval_tokens=eval_tokens,
                             bench=bench, audit=audit, budget=budget, progress=report.say,
                             show_progress=report.show_progress, recipient=recipient, ledger=ledger)
        report.update(result.to_json())
        for stage, state in result.stages.items():
            report.say(f"{stage}: {state}")
