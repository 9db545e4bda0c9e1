"""Fidelity frontier: coverage x order x fit -> top-1 agreement and KL on held-out text.

Each candidate's MLPs are swapped in memory for the runtime's own TaylorMLP (what users run), and
compared teacher-forced with the source on text sampled from the source with the eval prompt set and a
seed never used for calibration. Prints one JSON line per candidate.

    python benchmarks/fidelity_frontier.py CHECKPOINT STATS [--tokens 4096] [--orders 4 6 8] \
        [--coverages 1.0 0.9 0.7] [--fits weighted taylor] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from packager.formats.checkpoint import open_checkpoint
from packager.formats.stats import Stats
from packager.maths.transform import boost_channels, select_channels
from packager.stages.evaluate import EVAL_SEED_OFFSET, compare_to_logits, reference_logits
from packager.stages.options import ConvertOptions
from packager.stages.plan.fits import plan_layers
from packager.stages.swap import install_release_mlps, restore
from packager.stages.tensors import layer_tensors, release_spec
from packager.stages.text import sample_text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("stats")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--orders", type=int, nargs="+", default=[8])
    parser.add_argument("--coverages", type=float, nargs="+", default=[1.0, 0.9, 0.7])
    parser.add_argument("--fits", nargs="+", default=["weighted"])
    parser.add_argument("--no-hardening", action="store_true")
    parser.add_argument("--allocation", default="boost", choices=["boost", "uniform"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    source = open_checkpoint(args.checkpoint)
    stats = Stats.load(args.stats)
    model = source.load_model(torch.float32)
    text = sample_text(model, source.load_tokenizer(), kind="eval", tokens=args.tokens, seq_len=args.seq_len,
                       seed=args.seed + EVAL_SEED_OFFSET)
    reference = reference_logits(model, text.ids)
    secret = b"frontier"
    for fit in args.fits:
        for order in args.orders:
            options = ConvertOptions(order=order, coverage=1.0, fit=fit, hardening=not args.no_hardening,
                                     allocation=args.allocation)
            start = time.perf_counter()
            plans = plan_layers(source, stats, options)
            fit_seconds = time.perf_counter() - start
            for coverage in args.coverages:
                masks = select_channels(plans, coverage, fit)
                boosts = boost_channels(plans, masks, order)
                spec = release_spec(source, stats, options, masks, plans, secret, "float32", boosts)
                layers = {i: layer_tensors(source, plans, masks, options, secret, i, boosts)
                          for i in range(len(plans))}
                originals = install_release_mlps(model, source.adapter, spec, layers)
                try:
                    with torch.no_grad():
                        agreement = compare_to_logits(reference, model, text.ids)
                finally:
                    restore(originals)
                ppl_ref, ppl_rel = agreement.perplexities()
                print(json.dumps({
                    "fit": fit, "order": order, "coverage": spec["coverage"], "top1": agreement.top1_agreement,
                    "kl": agreement.kl_mean, "ppl_reference": ppl_ref, "ppl_release": ppl_rel,
                    "tokens": agreement.tokens, "fit_seconds": round(fit_seconds, 1),
                    "hardening": not args.no_hardening, "text": text.source,
                    "allocation": spec["allocation"]["kind"],
                }), flush=True)


if __name__ == "__main__":
    main()
