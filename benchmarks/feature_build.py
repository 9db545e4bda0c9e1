"""The runtime's feature build alone: this package's `TaylorMLP.features` against another runtime file's.

Builds one `TaylorMLP` per runtime with the same random weights at the demo model's MLP shape (hidden
576, intermediate 1536, full coverage, one order group), then times `features` (the projection, the
basis, the u product and the transposing copy; not Θ's multiply) interleaved, 10th percentile of
`--calls` calls per contender, on the process's CPU clock with one thread. Prints one JSON object.

    OMP_NUM_THREADS=1 python benchmarks/feature_build.py --compare-runtime old_modeling_unswift.py \
        [--orders 7 8 16 36] [--tokens 1 128]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prefill_flops import _runtime_classes  # noqa: E402


def build(mlp_class, order: int, hidden: int, intermediate: int) -> torch.nn.Module:
    spec = {"layers": [{"intermediate": intermediate, "expanded": intermediate}], "gated": True, "order": order,
            "basis": "chebyshev", "extrapolation": "linear", "hidden_act": "silu", "out_bias": False}
    mlp = mlp_class(types.SimpleNamespace(unswift=spec, hidden_size=hidden), 0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in mlp.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return mlp.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare-runtime", type=Path, required=True)
    parser.add_argument("--orders", nargs="+", type=int, default=[7, 8, 16, 36])
    parser.add_argument("--tokens", nargs="+", type=int, default=[1, 128])
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    current, compared = _runtime_classes(None)[0], _runtime_classes(args.compare_runtime)[0]
    rows = []
    for order in args.orders:
        mlps = {"current": build(current, order, args.hidden, args.intermediate),
                "compared": build(compared, order, args.hidden, args.intermediate)}
        for tokens in args.tokens:
            x = torch.randn(1, tokens, args.hidden, generator=torch.Generator().manual_seed(1))
            times: dict[str, list[float]] = {name: [] for name in mlps}
            with torch.no_grad():
                a, b = mlps["current"].features(x), mlps["compared"].features(x)
                error = float((a - b).abs().max() / b.abs().max())
                for call in range(args.calls + 10):
                    for name in (list(mlps) if call % 2 == 0 else list(mlps)[::-1]):
                        start = time.process_time()
                        mlps[name].features(x)
                        if call >= 10:
                            times[name].append(time.process_time() - start)
            p10 = {name: sorted(t)[len(t) // 10] * 1e6 for name, t in times.items()}
            rows.append({"order": order, "tokens": tokens, "us_current": p10["current"],
                         "us_compared": p10["compared"], "speedup": p10["compared"] / p10["current"],
                         "max_relative_difference": error})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"hidden": args.hidden, "intermediate": args.intermediate, "threads": 1,
                      "clock": "process_cpu", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
