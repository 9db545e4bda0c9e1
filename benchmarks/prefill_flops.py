"""Prefill against the FLOPs model: a release's measured prefill slowdown beside its FLOPs prediction.

Loads the source and the release once, then times, interleaved in one process (`packager.stages.bench`),
the source and the release with its MLP modules running this package's runtime (`packager.runtime`),
and, with `--compare-runtime FILE`, the same release with that file's `TaylorMLP` (e.g. the previous
version's `modeling_unswift.py`) swapped in: the weights are shared, only the feature build differs.
Prints one JSON object: per contender, median ms per prefilled token and decode step, the slowdowns,
the FLOPs model's prediction (`packager.maths.flops`) and measured / predicted.

    OMP_NUM_THREADS=1 python benchmarks/prefill_flops.py RELEASE --reference CKPT \
        [--compare-runtime old_modeling_unswift.py] [--prefill-tokens 128] [--repeats 7] [--batch 1]

On one CPU thread steps are timed with the process's CPU time (other jobs sharing the machine do not
count); the decode figures use `unswift bench`'s fixed-context method at --context tokens.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

from packager.formats.checkpoint import open_checkpoint
from packager.formats.safetensors import folder_tensors
from packager.maths.flops import token_flops
from packager.maths.sizing import predicted_decode_slowdown
from packager.runtime import modeling_unswift as current
from packager.stages import bench


def _runtime_classes(path: Path | None):
    """(TaylorMLP, SeriesBasis) of a modeling_unswift.py file (its relative import made absolute)."""
    if path is None:
        return current.TaylorMLP, current.SeriesBasis
    source = path.read_text().replace("from .configuration_unswift import",
                                      "from packager.runtime.configuration_unswift import")
    module_name = "unswift_compared_runtime"
    spec = importlib.util.spec_from_loader(module_name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - a local file the user names
    return module.TaylorMLP, module.SeriesBasis


def _swapper(model, classes):
    """A function that makes every series module of `model` run `classes`' code (weights untouched)."""
    mlp_class, basis_class = classes
    mlps = [m for m in model.modules() if type(m).__name__ == "TaylorMLP"]
    bases = [m for m in model.modules() if type(m).__name__ == "SeriesBasis"]

    def swap() -> None:
        for module in mlps:
            module.__class__ = mlp_class
        for module in bases:
            module.__class__ = basis_class
    return swap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("release", type=Path)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--compare-runtime", type=Path, default=None)
    parser.add_argument("--prefill-tokens", type=int, default=bench.DEFAULT_PREFILL_TOKENS)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--context", type=int, default=bench.DEFAULT_CONTEXT)
    parser.add_argument("--steps", type=int, default=bench.DEFAULT_STEPS)
    parser.add_argument("--skip-decode", action="store_true")
    args = parser.parse_args()

    source = open_checkpoint(args.reference)
    ref, rel = bench._load(args.release, source, torch.float32, "cpu")
    contenders = {"reference": bench.Contender(ref),
                  "release": bench.Contender(rel, _swapper(rel, _runtime_classes(None)))}
    if args.compare_runtime is not None:
        contenders["release_compared_runtime"] = bench.Contender(
            rel, _swapper(rel, _runtime_classes(args.compare_runtime)))
    names, group = list(contenders), list(contenders.values())
    vocab = int(ref.config.vocab_size)
    prefill, length = bench.measure_prefill(group, vocab=vocab, device="cpu", batch=args.batch,
                                            tokens=args.prefill_tokens, repeats=args.repeats)
    release_tensors, source_tensors = folder_tensors(args.release), folder_tensors(source.path)
    ours, theirs = (token_flops(t, ref.config, length=length) for t in (release_tensors, source_tensors))
    predicted = ours.total / theirs.total
    out = {"clock": bench.clock_for("cpu")[0], "threads": torch.get_num_threads(),
           "hardware": bench.hardware_name("cpu"), "batch": args.batch, "prefill_length": length,
           "repeats": args.repeats, "flops_per_token": {"reference": theirs.to_json(), "release": ours.to_json()},
           "predicted_prefill_slowdown": predicted, "prefill_ms_per_token": {}, "prefill_slowdown": {},
           "prefill_overhead": {}}
    for name, seconds in zip(names, prefill, strict=True):
        out["prefill_ms_per_token"][name] = seconds * 1e3
        if name != "reference":
            out["prefill_slowdown"][name] = seconds / prefill[0]
            out["prefill_overhead"][name] = seconds / prefill[0] / predicted
    if not args.skip_decode:
        decode = bench.measure_decode(group, vocab=vocab, device="cpu", batch=args.batch, context=args.context,
                                      steps=args.steps)
        out["predicted_decode_slowdown"] = predicted_decode_slowdown(
            release_tensors, source_tensors, ref.config, dtype="float32", context=args.context, batch=args.batch)
        out["decode_ms"] = {name: seconds * 1e3 for name, seconds in zip(names, decode, strict=True)}
        out["decode_slowdown"] = {name: seconds / decode[0] for name, seconds in zip(names, decode, strict=True)
                                  if name != "reference"}
        out["loader_overhead"] = {name: value / out["predicted_decode_slowdown"]
                                  for name, value in out["decode_slowdown"].items()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
