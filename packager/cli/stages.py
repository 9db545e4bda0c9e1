"""`calibrate`, `convert` and `eval`: the conversion stages."""

from __future__ import annotations

from pathlib import Path

import click

from packager.cli._app import common_options, main, reporting
from packager.cli._options import (
    build_convert_options,
    checked,
    checked_device,
    checked_device_or_auto,
    convert_options,
    dry_run_requested,
    fingerprint_request,
    report_plan,
)


@main.command()
@click.argument("checkpoint")
@click.option("--out", required=True, type=click.Path(), help="Statistics file to write (.safetensors).")
@click.option("--calibration", type=click.Path(), default=None,
              help="Text file, .jsonl with 'text', or folder of .txt. Default: sampled from the checkpoint.")
@click.option("--calibration-tokens", type=int, default=16384, show_default=True, callback=checked)
@click.option("--calibration-seed", type=int, default=0, show_default=True, callback=checked)
@click.option("--overwrite", is_flag=True, help="Replace an existing statistics file.")
@click.option("--device", default="cpu", show_default=True, callback=checked_device_or_auto,
              help="cpu, cuda[:i], or auto: the whole model over every visible GPU (then CPU) with accelerate's "
                   "device_map. With --calibration on cpu/cuda the checkpoint is read one decoder layer at a time.")
@common_options
def calibrate(checkpoint, out, calibration, calibration_tokens, calibration_seed, overwrite, device, as_json, quiet,
              debug):
    """Gather per-channel activation statistics of every MLP.

    \b
      unswift calibrate ./ckpt --out stats.safetensors
      unswift calibrate ./ckpt --out stats.safetensors --calibration corpus.jsonl
      unswift calibrate ./ckpt --out stats.safetensors --device auto   # a model larger than one GPU
    """
    with reporting("calibrate", as_json=as_json, quiet=quiet, debug=debug) as report:
        from packager import api

        stats = api.calibrate(checkpoint, text=calibration, tokens=calibration_tokens, seed=calibration_seed,
                              out=out, overwrite=overwrite, progress=report.say, device=device)
        report.update({"stats": str(out), "layers": len(stats.layers), **stats.summary()})
        report.say(f"wrote {out}: {len(stats.layers)} layers, {stats.tokens} tokens, "
                   f"{stats.heldout_outside_fraction:.2e} of held-out activations outside the calibrated range")


@main.command()
@click.argument("checkpoint")
@click.option("--out", type=click.Path(), default=None, help="Release folder. Default: ./releases/<name>.")
@convert_options
@common_options
def convert(checkpoint, out, order, coverage, fit, allocation, min_top1, calibration, calibration_tokens,
            calibration_seed, stats, hardening, secret_file, dtype, license_, base_model, overwrite, as_json, quiet,
            debug):
    """Write a TaylorMLP release folder (unsigned).

    \b
      unswift convert ./ckpt --out releases/model
      unswift convert ./ckpt --out releases/paper --fit taylor --no-hardening --coverage 0.7 --order 6
      unswift convert ./ckpt --out releases/slow --slowdown 4
      unswift convert ./ckpt --slowdown 4 --dry-run --json   # the plan only: nothing is written
      unswift convert ./ckpt --out releases/acme --recipient acme --ledger ledger.jsonl   # acme's copy
    """
    with reporting("convert", as_json=as_json, quiet=quiet, debug=debug) as report:
        from packager import api

        options = build_convert_options(order, coverage, fit, min_top1, hardening, dtype, license_, base_model,
                                        allocation, allow_dry_run=True)
        source = api.open_source(checkpoint)
        if dry_run_requested():
            report_plan(report, source, options, stats=stats)
            return
        recipient, ledger = fingerprint_request()
        out_dir = Path(out) if out else Path("releases") / source.name.split("/")[-1]
        result, secret = api.convert(source, out_dir, stats=stats, options=options, calibration=calibration,
                                     calibration_tokens=calibration_tokens, calibration_seed=calibration_seed,
                                     secret_file=secret_file, overwrite=overwrite, progress=report.say,
                                     recipient=recipient, ledger=ledger)
        report.update(result.to_json())
        if recipient is not None:
            report.update({"fingerprint": True})
        if secret.origin == "new":
            report.say(f"new hardening secret written to {secret.path} (mode 0600); keep it to re-create "
                       "this release, never publish it")
        report.update({"secret_file": str(secret.path) if secret.path else None})
        report.say(f"wrote {result.release_dir}: order {result.spec['order']}, coverage "
                   f"{result.spec['coverage']:.3f}, {api.format_size(result.release_bytes)}")


@main.command(name="eval")
@click.argument("release", type=click.Path())
@click.option("--reference", required=True, help="The source checkpoint (folder or Hub id).")
@click.option("--text", type=click.Path(), default=None, help="Eval text. Default: sampled from the reference.")
@click.option("--prompts", type=click.Path(), default=None, help="Greedy prompts, one per line.")
@click.option("--eval-tokens", type=int, default=8192, show_default=True, callback=checked)
@click.option("--seed", type=int, default=0, show_default=True, callback=checked)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
              help="Run both models in this dtype. Default: the release's.")
@click.option("--device", default=None, callback=checked_device,
              help="cpu, cuda or cuda:<index>. Default: cuda if present, else cpu.")
@click.option("--min-top1", type=float, default=None, callback=checked,
              help="Exit 1 if top-1 agreement is below this.")
@click.option("--max-kl", type=float, default=None, callback=checked,
              help="Exit 1 if mean KL (nats/token) is above this.")
@click.option("--record", is_flag=True, help="Store the result in the release's unswift.json "
              "(removes model.sig: re-sign afterwards).")
@common_options
def eval_(release, reference, text, prompts, eval_tokens, seed, dtype, device, min_top1, max_kl, record,
          as_json, quiet, debug):
    """Measure a release's fidelity against its source checkpoint.

    \b
      unswift eval releases/model --reference ./ckpt
      unswift eval releases/model --reference ./ckpt --dtype bfloat16 --min-top1 0.99 --json
    """
    with reporting("eval", as_json=as_json, quiet=quiet, debug=debug) as report:
        from packager import api

        result = api.evaluate(release, reference, text=text, prompts=prompts, tokens=eval_tokens, seed=seed,
                              dtype=dtype, device=device, min_top1=min_top1, max_kl=max_kl, progress=report.say)
        report.update(result.to_json())
        if record:
            removed = api.record_measurement(release, "eval", result.to_json())
            if removed:
                report.say("model.sig removed: the record changed; re-sign with `unswift sign`")
        floor = result.noise_floor
        report.say(f"top-1 {result.top1_agreement:.4f} (floor {floor['top1_agreement']:.4f}), "
                   f"KL {result.kl_mean:.2e} (floor {floor['kl_mean']:.2e}), "
                   f"ppl {result.ppl_reference:.3f} -> {result.ppl_release:.3f}, greedy match {result.greedy_match} "
                   f"[{result.device} {result.dtype}, {result.hardware}]")
