"""GPU figures on real weights: the demo release against its source, for the next lent GPU machine.

One script, sized to finish within 8 minutes on one H100/H200 (not yet run on a GPU: `--budget-s`
bounds the compiled runs, the longest part), every figure written as JSON under $OUT as soon as it
exists (a run cut short keeps what it measured):

1. the source: `--checkpoint DIR` (safetensors with tokenizer), or `--gguf FILE` (the demo's Q4_1 GGUF,
   dequantised to float32 like `unswift demo-checkpoint`);
2. the release: `--release DIR`, or converted here (calibration on `--calibration-text`, order 8,
   coverage 1.0 unless told otherwise);
3. per dtype (bfloat16, float16) and batch (1, 16): decode and prefill of both models, interleaved
   (`packager.stages.bench`), in three modes: `eager` (transformers' forward), `graph` (one decode step
   captured in a CUDA graph and replayed; prefill is not captured) and `compiled` (`torch.compile`,
   mode "reduce-overhead", i.e. with CUDA graphs);
4. per dtype: fidelity on the GPU, top-1 agreement and KL against the source on held-out text
   (`packager.stages.evaluate`, `--eval-text`, a file the calibration did not read).

A measurement that fails (a capture that hits a host synchronisation, a compile error) is recorded as
its error and the run goes on; `--budget-s` skips what is left of the compiled mode once spent.

    # on the GPU machine (the GGUF travels in two parts of < 64 MiB and is joined there):
    OUT=/tmp/out python benchmarks/gpu_real_weights.py --gguf demo.gguf \
        --calibration-text docs/BENCHMARKS.md --eval-text docs/INTERFACE.md
    # anywhere, in seconds: the whole script on a tiny random model, on the CPU (no timing is meaningful)
    OUT=/tmp/out python benchmarks/gpu_real_weights.py --dry-run

Files: environment.json, convert.json, bench_<dtype>.json (one entry per batch and mode), eval_<dtype>.json,
summary.json (everything, with the seconds each step took).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from packager.formats.safetensors import folder_tensors  # noqa: E402
from packager.maths.flops import token_flops  # noqa: E402
from packager.maths.sizing import predicted_decode_slowdown  # noqa: E402
from packager.stages import bench  # noqa: E402

#: The tiny model of --dry-run (Llama, random weights): seconds on a CPU.
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, max_position_embeddings=256)


class Run:
    """The run's JSON: every section is written to $OUT as soon as it is measured."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.summary: dict = {"steps": {}}
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def write(self, name: str, value) -> None:
        self.summary[name] = value
        (self.out / f"{name}.json").write_text(json.dumps(value, indent=1, default=str))
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=1, default=str))

    def step(self, name: str, seconds: float) -> None:
        self.summary["steps"][name] = round(seconds, 2)
        print(f"[{self.elapsed():7.1f} s] {name}: {seconds:.1f} s", flush=True)


def guarded(action, *args, **kwargs) -> dict:
    """`action`'s result, or the error it raised: one failed measurement must not lose the others.

    A lent GPU is rare and the run is one-shot, so any failure (capture, compile, out of memory) is
    recorded in the JSON with its traceback's tail instead of ending the script.
    """
    try:
        return action(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - recorded, see the docstring
        return {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-1500:]}


def tiny_source(work: Path) -> Path:
    """A tiny random Llama checkpoint (the --dry-run source)."""
    config = transformers.LlamaConfig(**TINY)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("gate_proj.weight", "up_proj.weight")):
                parameter.mul_(20.0)  # gate pre-activations of a few units: the series has work to do
    path = work / "tiny-llama"
    model.save_pretrained(path)
    return path


def source_checkpoint(args, work: Path) -> Path:
    if args.dry_run:
        return tiny_source(work)
    if args.checkpoint:
        return args.checkpoint
    if args.gguf:
        from packager.formats.gguf import materialise_gguf

        return materialise_gguf(args.gguf, work / "source")
    raise SystemExit("pass --checkpoint DIR, --gguf FILE or --dry-run")


def convert(run: Run, args, source: Path, work: Path) -> Path:
    from packager import api
    from packager.stages.options import ConvertOptions

    if args.release:
        return args.release
    start = time.perf_counter()
    stats = api.calibrate(source, text=None if args.dry_run else args.calibration_text,
                          tokens=args.calibration_tokens)
    run.step("calibrate", time.perf_counter() - start)
    start = time.perf_counter()
    release = work / "release"
    result, _ = api.convert(source, release, stats=stats, overwrite=True,
                            options=ConvertOptions(order=args.order, coverage=args.coverage))
    run.step("convert", time.perf_counter() - start)
    run.write("convert", {**result.to_json(), "calibration_tokens": args.calibration_tokens,
                          "calibration_text": None if args.dry_run else str(args.calibration_text)})
    return release


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def graph_decode(contenders: list[bench.Contender], token: torch.Tensor, context: int, steps: int,
                 device: str) -> dict:
    """Decode steps captured in one CUDA graph per model and replayed, interleaved; ms per step.

    A captured step is the forward pass followed by the cache's crop back by one token (the static
    cache's length is a device tensor both update in place), so every replay writes the same slot at
    the same context and does the same work, as in eager timing, with no host synchronisation.
    """
    if not device.startswith("cuda"):
        return {"skipped": "CUDA graphs need a CUDA device"}
    sync = bench.synchronizer(device)
    graphs = []
    for contender in contenders:
        step = _fixed_context_step(contender, token)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            step()
        graphs.append(graph)
    times: list[list[float]] = [[] for _ in graphs]
    for round_ in range(steps):
        order = range(len(graphs)) if round_ % 2 == 0 else reversed(range(len(graphs)))
        for i in order:
            sync()
            start = time.perf_counter()
            graphs[i].replay()
            sync()
            times[i].append(time.perf_counter() - start)
    ref, rel = (_median_ms(t) for t in times)
    return {"decode_ms": {"reference": ref, "release": rel}, "decode_slowdown": rel / ref}


def _fixed_context_step(contender: bench.Contender, token: torch.Tensor):
    """One decode step into the contender's static cache that leaves it as it was (no host sync).

    transformers >= ~5.20 keeps the static cache's length in a device tensor: the step is the forward
    pass then the cache cropped back by one token. Older static caches have no `crop` and write where
    `cache_position` says: the step passes the slot after the prompt explicitly.
    """
    model, cache = contender.model, contender.cache
    kwargs = {**bench._cache_kwargs(model, cache), "input_ids": token}
    if all(hasattr(layer, "crop") for layer in getattr(cache, "layers", [])):
        def step() -> None:
            model(**kwargs)
            cache.crop(-1)
        return step
    slot = int(cache.get_seq_length())
    position = torch.full((1,), slot, device=token.device, dtype=torch.long)
    kwargs.update(cache_position=position, position_ids=position.expand(token.shape[0], 1))
    return lambda: model(**kwargs)


def eager(contenders, *, vocab, device, batch, context, steps, prefill_tokens) -> dict:
    ref_s, rel_s = bench.measure_decode(contenders, vocab=vocab, device=device, batch=batch, context=context,
                                        steps=steps)
    (ref_p, rel_p), length = bench.measure_prefill(contenders, vocab=vocab, device=device, batch=batch,
                                                   tokens=prefill_tokens)
    return {"decode_ms": {"reference": ref_s * 1e3, "release": rel_s * 1e3}, "decode_slowdown": rel_s / ref_s,
            "prefill_ms_per_token": {"reference": ref_p * 1e3, "release": rel_p * 1e3},
            "prefill_slowdown": rel_p / ref_p, "prefill_length": length}


def measure_dtype(run: Run, args, source: Path, release: Path, dtype_name: str) -> None:
    from packager.dtypes import RUNTIME
    from packager.formats.checkpoint import open_checkpoint

    device = args.device
    start = time.perf_counter()
    checkpoint = open_checkpoint(source)
    ref, rel = bench._load(release, checkpoint, RUNTIME[dtype_name], device)
    run.step(f"load {dtype_name}", time.perf_counter() - start)
    vocab = int(ref.config.vocab_size)
    release_tensors, source_tensors = folder_tensors(release), folder_tensors(source)
    entries = []
    result = {"dtype": dtype_name, "device": device, "hardware": bench.hardware_name(device), "entries": entries}
    for batch in args.batches:
        length = max(1, args.prefill_tokens // batch)
        predicted = {
            "predicted_decode_slowdown": predicted_decode_slowdown(
                release_tensors, source_tensors, ref.config, dtype=dtype_name, context=args.context, batch=batch),
            "predicted_prefill_slowdown": token_flops(release_tensors, ref.config, length=length).total
            / token_flops(source_tensors, ref.config, length=length).total}
        start = time.perf_counter()
        entries.append({"batch": batch, "context": args.context, **predicted, "eager": guarded(
            eager, [bench.Contender(ref), bench.Contender(rel)], vocab=vocab, device=device, batch=batch,
            context=args.context, steps=args.steps, prefill_tokens=args.prefill_tokens)})
        run.step(f"{dtype_name} batch {batch} eager", time.perf_counter() - start)
        run.write(f"bench_{dtype_name}", result)
    fidelity(run, args, source, release, dtype_name)
    # Compiled, then hand-captured graphs last: a failed capture is the likeliest to leave the device unusable.
    for mode, action in (("compiled", _compiled_entry), ("graph", _graph_entry)):
        if mode not in args.modes:
            continue
        for entry in entries:
            if mode == "compiled" and run.elapsed() > args.budget_s:
                entry[mode] = {"skipped": f"time budget of {args.budget_s} s spent"}
                continue
            start = time.perf_counter()
            entry[mode] = guarded(action, ref, rel, vocab=vocab, device=device, batch=entry["batch"],
                                  context=args.context, steps=args.steps, prefill_tokens=args.prefill_tokens)
            run.step(f"{dtype_name} batch {entry['batch']} {mode}", time.perf_counter() - start)
            run.write(f"bench_{dtype_name}", result)
    del ref, rel
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _prefilled(contenders, *, vocab, device, batch, context):
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, vocab, (1, context), generator=generator).expand(batch, context).contiguous()
    token = torch.randint(3, vocab, (1, 1), generator=generator).expand(batch, 1).contiguous().to(device)
    for contender in contenders:
        contender.cache = bench.prefill_cache(contender, prompt.to(device))
    return token


def _graph_entry(ref, rel, *, vocab, device, batch, context, steps, prefill_tokens) -> dict:
    """Decode in hand-captured CUDA graphs (prefill is not captured: `prefill_tokens` is unused)."""
    if not device.startswith("cuda"):
        return {"skipped": "CUDA graphs need a CUDA device"}
    contenders = [bench.Contender(ref), bench.Contender(rel)]
    token = _prefilled(contenders, vocab=vocab, device=device, batch=batch, context=context)
    try:
        return graph_decode(contenders, token, context, steps, device)
    finally:
        for contender in contenders:
            contender.cache = None


def _compiled_entry(ref, rel, *, vocab, device, batch, context, steps, prefill_tokens) -> dict:
    """torch.compile (reduce-overhead on CUDA) of both models' forward: decode and prefill, interleaved."""
    # On a CPU (--dry-run) the same path runs uncompiled: tracing the model would take minutes there.
    cuda = device.startswith("cuda")
    mode, backend = ("reduce-overhead", "inductor") if cuda else (None, None)
    contenders = [bench.Contender(_CompiledModel(model, mode, backend)) for model in (ref, rel)]
    token = _prefilled(contenders, vocab=vocab, device=device, batch=batch, context=context)
    sync, (_, clock) = bench.synchronizer(device), bench.clock_for(device)
    fixed = {id(contender): _fixed_context_step(contender, token) for contender in contenders}

    start = time.perf_counter()
    decode = bench.interleaved(contenders, lambda c: bench._timed(fixed[id(c)], sync, clock), steps,
                               3)  # the warm-up rounds compile and record the graphs
    compile_seconds = time.perf_counter() - start
    for contender in contenders:
        contender.cache = None
    (ref_p, rel_p), length = bench.measure_prefill(contenders, vocab=vocab, device=device, batch=batch,
                                                   tokens=prefill_tokens)
    ref_d, rel_d = (_median_ms(t) for t in decode)
    return {"mode": mode or "default", "backend": backend, "decode_ms": {"reference": ref_d, "release": rel_d},
            "decode_slowdown": rel_d / ref_d, "prefill_ms_per_token": {"reference": ref_p * 1e3,
                                                                       "release": rel_p * 1e3},
            "prefill_slowdown": rel_p / ref_p, "prefill_length": length,
            "decode_seconds_with_compile": compile_seconds}


class _CompiledModel(torch.nn.Module):
    """A model whose forward is `torch.compile`d; `config` and the signature stay the model's."""

    def __init__(self, model, mode, backend) -> None:
        super().__init__()
        self.inner = model
        self.config = model.config
        self.compiled = (torch.compile(model.forward, mode=mode, backend=backend, dynamic=False)
                         if backend else model.forward)
        self.forward = self.compiled  # bench inspects forward's parameters (cache vs past_key_values)


def fidelity(run: Run, args, source: Path, release: Path, dtype_name: str) -> None:
    from packager.formats.checkpoint import open_checkpoint
    from packager.stages.evaluate import evaluate

    start = time.perf_counter()
    text = None if args.dry_run else args.eval_text
    report = guarded(lambda: evaluate(release, open_checkpoint(source), text=text, tokens=args.eval_tokens,
                                      dtype=dtype_name, device=args.device,
                                      greedy_tokens=args.greedy_tokens).to_json())
    run.step(f"eval {dtype_name}", time.perf_counter() - start)
    run.write(f"eval_{dtype_name}", report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--gguf", type=Path)
    parser.add_argument("--release", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="a tiny random model on the CPU, in seconds")
    parser.add_argument("--device", default=None, help="default cuda (cpu with --dry-run)")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--modes", nargs="+", default=["eager", "graph", "compiled"])
    parser.add_argument("--order", type=int, default=8)
    parser.add_argument("--coverage", type=float, default=1.0)
    parser.add_argument("--calibration-text", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    parser.add_argument("--calibration-tokens", type=int, default=1024)
    parser.add_argument("--eval-text", type=Path, default=ROOT / "docs" / "INTERFACE.md")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--greedy-tokens", type=int, default=32)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--prefill-tokens", type=int, default=512)
    parser.add_argument("--budget-s", type=float, default=300.0, help="skip compiled runs once this is spent")
    args = parser.parse_args()
    # Two models x two dtypes x decode and prefill shapes: more variants than dynamo's default of 8
    # recompilations per code object, after which it would silently run eagerly.
    torch._dynamo.config.recompile_limit = 64
    if args.dry_run:
        args.device = args.device or "cpu"
        args.calibration_tokens, args.eval_tokens, args.greedy_tokens = 256, 64, 4
        args.context, args.steps, args.prefill_tokens = 16, 2, 16
    args.device = args.device or "cuda"
    out = Path(os.environ.get("OUT", "gpu-out"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("WORK", out / "work" if args.dry_run else "/tmp/unswift-gpu-real"))
    work.mkdir(parents=True, exist_ok=True)
    run = Run(out)
    run.write("environment", {
        "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "device": args.device,
        "dry_run": args.dry_run, "argv": sys.argv[1:]})
    source = source_checkpoint(args, work)
    release = convert(run, args, source, work)
    for dtype_name in args.dtypes:
        measure_dtype(run, args, source, release, dtype_name)
    run.step("total", run.elapsed())
    (out / "summary.json").write_text(json.dumps(run.summary, indent=1, default=str))


if __name__ == "__main__":
    main()
