"""`bench`: measured slowdown of a release against its source, beside the bytes model's prediction."""

from __future__ import annotations

import click

from packager.cli._app import common_options, main, reporting
from packager.cli._options import checked, checked_device


@main.command()
@click.argument("release", type=click.Path())
@click.option("--reference", required=True, help="The source checkpoint (folder or Hub id).")
@click.option("--device", default=None, callback=checked_device,
              help="cpu, cuda or cuda:<index>. Default: cuda if present, else cpu.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
              help="Run both models in this dtype. Default: the release's.")
@click.option("--batch", "batches", type=int, multiple=True, callback=checked,
              help="Batch size; repeat for several. Default: 1 and 8 (batch 1 gives the top-level fields).")
@click.option("--context", type=int, default=512, show_default=True, callback=checked,
              help="Tokens in the KV cache while decode steps are timed (the bytes model uses the same).")
@click.option("--steps", type=int, default=20, show_default=True, callback=checked,
              help="Timed decode steps per model and batch, interleaved, after 3 warm-up steps.")
@click.option("--prefill-tokens", type=int, default=128, show_default=True, callback=checked,
              help="Tokens of each prefill measurement, all sequences of the batch together.")
@click.option("--record", is_flag=True, help="Store the entries in the release's unswift.json, replacing those of "
              "the same (device, dtype, batch); removes model.sig: re-sign afterwards.")
@common_options
def bench(release, reference, device, dtype, batches, context, steps, prefill_tokens, record, as_json, quiet, debug):
    """Measure a release's decode and prefill slowdown against its source.

    Both models run interleaved in one process on the same prompt, after warm-up, with the device
    synchronised around every step; the KV cache holds --context tokens throughout. On a single CPU
    thread (OMP_NUM_THREADS=1) steps are timed with the process's CPU time, so other processes sharing
    the machine do not count; otherwise with the wall clock. JSON fields: decode_slowdown,
    prefill_slowdown (median per-token time, release / reference), predicted_decode_slowdown (bytes read
    per decoded token, release / reference), loader_overhead (measured / predicted),
    predicted_prefill_slowdown (MLP and attention FLOPs per prefilled token, release / reference),
    prefill_overhead (measured / predicted), flops_per_token, device, dtype,
    batch, context, decode_ms, prefill_ms_per_token, bytes_per_step, threads, hardware, clock
    ("process_cpu" or "wall"); `entries` holds one such object per batch size.

    \b
      unswift bench releases/model --reference ./ckpt
      unswift bench releases/model --reference ./ckpt --device cuda --dtype bfloat16 --batch 1 --batch 16 --json
      OMP_NUM_THREADS=1 unswift bench releases/model --reference ./ckpt --record
    """
    with reporting("bench", as_json=as_json, quiet=quiet, debug=debug) as report:
        from packager import api

        chosen = {"batches": tuple(batches)} if batches else {}
        result = api.bench(release, reference, device=device, dtype=dtype, context=context, steps=steps,
                           prefill_tokens=prefill_tokens, progress=report.say, **chosen)
        report.update(result.to_json())
        if record:
            if api.record_bench(release, result):
                report.say("model.sig removed: the record changed; re-sign with `unswift sign`")
        head = result.headline()
        report.say(f"decode {head.decode_slowdown:.2f}x slower (bytes model {head.predicted_decode_slowdown:.2f}x, "
                   f"loader overhead {head.loader_overhead:.3f}), prefill {head.prefill_slowdown:.2f}x "
                   f"(FLOPs model {head.predicted_prefill_slowdown:.2f}x) "
                   f"[{head.device} {head.dtype} batch {head.batch}, {head.hardware}]")
