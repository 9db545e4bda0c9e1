"""The series fits of a checkpoint's first MLP units: channel blocks per thread against torch's intra-op threads.

Times `packager.maths.transform.fit_layer` (the fits `unswift convert` runs for every unit before it
writes) on the first `--units` units of a checkpoint with its statistics, alternating two ways of
using torch's threads: "blocks" (this package: each channel block on a thread of its own, torch
single-threaded inside it) and "intra_op" (the blocks one after another, each kernel split over torch's
intra-op threads, as before). Wall clock (several threads run), median per unit; checks that both give
bit-identical fits. Prints one JSON object.

    python benchmarks/fit_threads.py CHECKPOINT STATS [--units 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from packager.formats.checkpoint import open_checkpoint
from packager.formats.stats import Stats
from packager.maths.series import fit
from packager.maths.series.activations import get_activation
from packager.maths.transform import fit_layer
from packager.stages.tensors import mlp_units


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("stats")
    parser.add_argument("--units", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--order", type=int, default=8)
    args = parser.parse_args()
    checkpoint = open_checkpoint(args.checkpoint)
    stats = Stats.load(args.stats)
    activation = get_activation(checkpoint.adapter.activation_name(checkpoint.config))
    units = mlp_units(checkpoint)[: args.units]
    downs = [checkpoint.adapter.read_mlp(checkpoint, unit, parts=("down",))["down"].double().norm(dim=0)
             for unit in units]
    blocks = fit.map_blocks

    def serial(function, starts):
        return [function(start) for start in starts]

    times: dict[str, list[float]] = {"blocks": [], "intra_op": []}
    for round_ in range(args.rounds):
        for name in (("blocks", "intra_op") if round_ % 2 == 0 else ("intra_op", "blocks")):
            fit.map_blocks = blocks if name == "blocks" else serial
            try:
                plans = []
                for down, layer_stats in zip(downs, stats.layers, strict=False):
                    start = time.perf_counter()
                    plans.append(fit_layer(activation, layer_stats, down, order=args.order, fit="weighted",
                                           normalise=True, allocation="boost"))
                    times[name].append(time.perf_counter() - start)
            finally:
                fit.map_blocks = blocks
            if name == "blocks":
                reference = plans
            else:
                other = plans
        identical = all(torch.equal(a.fit.coefficients, b.fit.coefficients)
                        and torch.equal(a.boost.coefficients, b.boost.coefficients)
                        for a, b in zip(reference, other, strict=True))
    out = {"units": len(units), "channels_per_unit": int(stats.layers[0].min.numel()),
           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "load_average": os.getloadavg(), "seconds_per_unit": {k: statistics.median(v) for k, v in times.items()},
           "all_seconds": times, "bit_identical": identical}
    out["speedup"] = out["seconds_per_unit"]["intra_op"] / out["seconds_per_unit"]["blocks"]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
