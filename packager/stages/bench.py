"""Measured slowdown of a release against its source, beside the bytes model's (decode) and FLOPs model's
(prefill) predictions.

Timing follows gpt-fast: warm-up first, the device synchronised before each clock read, and a fixed
context so every decode step does the same work: a static KV cache holds `context` tokens, each timed
step decodes one token into the next slot and the cache is cropped back afterwards (no allocation).
The two models run interleaved in one process (reference, release, release, reference, ...) on the
same prompt, so a busy machine slows both alike, and the medians are compared. Decode timing needs
only the cache's contents to have the right shape, so the release decodes from a copy of the
reference's prefilled cache instead of paying a long prefill of its own. On a single CPU thread steps
are timed with the process's CPU time (`clock_for`): time-slicing by other processes does not count.

    report = bench("releases/model", "./ckpt", batches=(1, 8))
    report.to_json()["decode_slowdown"]
"""

from __future__ import annotations

import copy
import inspect
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from packager.devices import check_device, default_device, hardware_name
from packager.dtypes import RUNTIME, check_dtype
from packager.errors import UsageError
from packager.formats.checkpoint import Checkpoint
from packager.formats.safetensors import folder_tensors
from packager.limits import check, check_each
from packager.maths.flops import token_flops
from packager.maths.sizing import predicted_decode_slowdown, step_bytes
from packager.progress import Progress, reporter

#: Tokens held in the KV cache while decode steps are timed (the bytes model uses the same).
DEFAULT_CONTEXT = 512
DEFAULT_BATCHES = (1, 8)
DEFAULT_STEPS = 20
DEFAULT_WARMUP = 3
#: Tokens of one prefill measurement (all sequences together).
DEFAULT_PREFILL_TOKENS = 128
PREFILL_REPEATS = 3


@dataclass(frozen=True)
class BenchEntry:
    """One (device, dtype, batch) measurement: the `bench` fields of docs/INTERFACE.md#cmd-bench plus the raw times."""

    decode_slowdown: float
    prefill_slowdown: float
    predicted_decode_slowdown: float
    predicted_prefill_slowdown: float
    device: str
    dtype: str
    batch: int
    context: int
    decode_ms: dict  # median ms per decode step: {"reference", "release"}
    prefill_ms_per_token: dict  # median ms per prefilled token: {"reference", "release"}
    bytes_per_step: dict  # the bytes model: {"reference", "release"}
    flops_per_token: dict  # the FLOPs model at the prefill's length: {"reference", "release"}
    steps: int
    prefill_tokens: int
    threads: int
    hardware: str
    clock: str = "wall"  # "process_cpu" on a single CPU thread (see `clock_for`)

    @property
    def loader_overhead(self) -> float:
        """Measured / predicted decode slowdown: 1.0 when the release is exactly as slow as its bytes."""
        return self.decode_slowdown / self.predicted_decode_slowdown

    @property
    def prefill_overhead(self) -> float:
        """Measured / predicted prefill slowdown: 1.0 when the release is exactly as slow as its FLOPs."""
        return self.prefill_slowdown / self.predicted_prefill_slowdown

    def to_json(self) -> dict:
        return {**asdict(self), "loader_overhead": self.loader_overhead, "prefill_overhead": self.prefill_overhead}


@dataclass(frozen=True)
class BenchReport:
    """Every entry measured; the batch-1 entry (else the first) gives the top-level fields.

    The fields are those of docs/INTERFACE.md#cmd-bench.
    """

    entries: list[BenchEntry] = field(default_factory=list)

    def headline(self) -> BenchEntry:
        return next((e for e in self.entries if e.batch == 1), self.entries[0])

    def to_json(self) -> dict:
        return {**self.headline().to_json(), "entries": [e.to_json() for e in self.entries]}

    def record_entries(self) -> list[dict]:
        """What `unswift.json`'s `bench` list keeps: one entry per (device, dtype, batch)."""
        return [e.to_json() for e in self.entries]


def merge_entries(existing: Sequence[dict], new: Sequence[dict]) -> list[dict]:
    """The record's bench list with `new` entries replacing those of the same (device, dtype, batch)."""
    key = lambda e: (e.get("device"), e.get("dtype"), e.get("batch"))  # noqa: E731
    merged = {key(e): e for e in existing}
    merged.update({key(e): e for e in new})
    return sorted(merged.values(), key=lambda e: (str(e.get("device")), str(e.get("dtype")), e.get("batch") or 0))


def record_bench(release_dir: Path, report: BenchReport) -> bool:
    """Merge a report's entries into the record (one per device, dtype, batch); True if model.sig was removed."""
    from packager.formats.record import read_record, record_measurement

    existing = read_record(release_dir).get("bench") or []
    return record_measurement(release_dir, "bench", merge_entries(existing, report.record_entries()))


def synchronizer(device: str) -> Callable[[], None]:
    """A function that waits for the device's queued work (no-op on CPU)."""
    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(torch.device(device))
    return lambda: None


def clock_for(device: str) -> tuple[str, Callable[[], float]]:
    """The clock steps are timed with: ("process_cpu", time.process_time) on a single-threaded CPU, else wall.

    On one CPU thread a step's process CPU time is its wall time on an idle machine, and it does not
    count the time other processes hold the core, so ratios measured on a shared machine hold still.
    With several threads (spinning workers would be counted) and on GPUs the wall clock is used.
    """
    if device == "cpu" and torch.get_num_threads() == 1:
        return "process_cpu", time.process_time
    return "wall", time.perf_counter


def _accepts(model, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def _cache_kwargs(model, cache) -> dict:
    # transformers >= 5.x renamed past_key_values to cache; both are accepted for a while.
    return {"cache" if _accepts(model, "cache") else "past_key_values": cache, "use_cache": True}


@dataclass
class Contender:
    """A model to time, and what to do before each of its steps (e.g. swap its MLP modules in)."""

    model: torch.nn.Module
    activate: Callable[[], None] | None = None
    cache: object = None

    def enter(self) -> None:
        if self.activate is not None:
            self.activate()


@torch.no_grad()
def prefill_cache(contender: Contender, prompt: torch.Tensor):
    """Run the prompt [B, L] once into a static cache with room for one more token, and return it."""
    from transformers import StaticCache

    contender.enter()
    model = contender.model
    cache = StaticCache(config=model.config, max_cache_len=prompt.shape[1] + 1)
    extra = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    model(input_ids=prompt, **_cache_kwargs(model, cache), **extra)
    return cache


@torch.no_grad()
def decode_step(contender: Contender, token: torch.Tensor, sync: Callable[[], None],
                clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds of one decode step at a fixed context: the cache is cropped back afterwards."""
    contender.enter()
    model = contender.model
    # transformers before ~5.20 has no StaticLayer.crop: time a copy of the prefilled cache instead.
    croppable = all(hasattr(layer, "crop") for layer in getattr(contender.cache, "layers", []))
    cache = contender.cache if croppable else copy.deepcopy(contender.cache)
    elapsed = _timed(lambda: model(input_ids=token, **_cache_kwargs(model, cache)), sync, clock)
    if croppable:
        cache.crop(-1)
    return elapsed


@torch.no_grad()
def prefill_step(contender: Contender, prompt: torch.Tensor, sync: Callable[[], None],
                 clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds of one prefill of `prompt` [B, P] from an empty cache."""
    contender.enter()
    model = contender.model
    extra = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    return _timed(lambda: model(input_ids=prompt, use_cache=False, **extra), sync, clock)


def _timed(step: Callable[[], object], sync: Callable[[], None], clock: Callable[[], float]) -> float:
    """Seconds `step` takes, with the device's queued work finished before and after (gpt-fast style)."""
    sync()
    start = clock()
    step()
    sync()
    return clock() - start


def interleaved(contenders: Sequence[Contender], run: Callable[[Contender], float], rounds: int,
                warmup: int) -> list[list[float]]:
    """Times of `run` per contender, alternating their order each round after `warmup` rounds each."""
    for _ in range(warmup):
        for contender in contenders:
            run(contender)
    times: list[list[float]] = [[] for _ in contenders]
    order = list(range(len(contenders)))
    for round_ in range(rounds):
        for i in (order if round_ % 2 == 0 else order[::-1]):
            times[i].append(run(contenders[i]))
    return times


def measure_decode(contenders: Sequence[Contender], *, vocab: int, device: str, batch: int, context: int,
                   steps: int = DEFAULT_STEPS, warmup: int = DEFAULT_WARMUP, seed: int = 0) -> list[float]:
    """Median seconds per decode step of each contender at `context` tokens, `batch` sequences.

    The first contender prefills the prompt; the others decode from copies of its cache.
    """
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, vocab, (1, context), generator=generator).expand(batch, context).contiguous()
    token = torch.randint(3, vocab, (1, 1), generator=generator).expand(batch, 1).contiguous()
    cache = prefill_cache(contenders[0], prompt.to(device))
    token = token.to(device)
    for i, contender in enumerate(contenders):
        contender.cache = cache if i == 0 else copy.deepcopy(cache)
    sync, (_, clock) = synchronizer(device), clock_for(device)
    times = interleaved(contenders, lambda c: decode_step(c, token, sync, clock), steps, warmup)
    for contender in contenders:
        contender.cache = None
    return [statistics.median(t) for t in times]


def measure_prefill(contenders: Sequence[Contender], *, vocab: int, device: str, batch: int, tokens: int,
                    repeats: int = PREFILL_REPEATS, seed: int = 1) -> tuple[list[float], int]:
    """Median seconds per prefilled token of each contender, and the prompt length per sequence."""
    length = max(1, tokens // batch)
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, vocab, (1, length), generator=generator).expand(batch, length).contiguous()
    prompt = prompt.to(device)
    sync, (_, clock) = synchronizer(device), clock_for(device)
    times = interleaved(contenders, lambda c: prefill_step(c, prompt, sync, clock), repeats, 1)
    return [statistics.median(t) / (batch * length) for t in times], length


def _load(release_dir: Path, reference: Checkpoint, dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM

    from packager.stages.evaluate import load_release

    ref = AutoModelForCausalLM.from_pretrained(reference.path, dtype=dtype).to(device).eval()
    rel = load_release(release_dir, dtype=dtype, device=device)
    return ref, rel


def check_bench_options(*, device: str | None = None, dtype: str | None = None,
                        batches: Sequence[int] | None = None, context: int | None = None, steps: int | None = None,
                        prefill_tokens: int | None = None) -> None:
    """Raise UsageError for a bench option out of range or a device this machine lacks (None: not given)."""
    if batches is not None and len(batches) == 0:
        raise UsageError("--batch: pass at least one batch size, e.g. --batch 1 --batch 8")
    check_each("--batch", batches)
    check("--context", context)
    check("--steps", steps)
    check("--prefill-tokens", prefill_tokens)
    check_dtype(dtype)
    check_device(device)


def bench(
    release_dir: str | Path, reference: str | Path | Checkpoint, *, device: str | None = None,
    dtype: str | None = None, batches: Sequence[int] = DEFAULT_BATCHES, context: int = DEFAULT_CONTEXT,
    steps: int = DEFAULT_STEPS, warmup: int = DEFAULT_WARMUP, prefill_tokens: int = DEFAULT_PREFILL_TOKENS,
    progress: Progress = None,
) -> BenchReport:
    """Measure a release's decode and prefill slowdown against its source, per batch size.

    Args:
        release_dir: the release folder.
        reference: the source checkpoint (folder, Hub id or an opened `Checkpoint`).
        device: "cpu" or "cuda[:i]"; default cuda if present, else cpu.
        dtype: float32, bfloat16 or float16; default the release's.
        batches: batch sizes to measure (docs/INTERFACE.md#metrics-bench: 1 and a larger one).
        context: tokens in the KV cache while decoding (the bytes model uses the same).
        steps: timed decode steps per model and batch, after `warmup` untimed ones.
        prefill_tokens: tokens per prefill measurement, all sequences together.

    Returns:
        One entry per batch size; `to_json()` gives the interface's fields for batch 1 plus all entries.

    Raises:
        UsageError: an option out of range or an unknown or absent device (checked before anything is
            read), or not a release.
    """
    from packager.formats.checkpoint import open_checkpoint
    from packager.formats.record import read_record

    check_bench_options(device=device, dtype=dtype, batches=batches, context=context, steps=steps,
                        prefill_tokens=prefill_tokens)
    if warmup < 0:
        raise UsageError(f"warmup {warmup} is out of range: pass 0 or more warm-up steps")
    say = reporter(progress)
    release_dir = Path(release_dir)
    record = read_record(release_dir)
    source = reference if isinstance(reference, Checkpoint) else open_checkpoint(reference)
    device = device or default_device()
    dtype_name = dtype or record["transform"].get("dtype", "float32")
    if dtype_name not in RUNTIME:
        raise UsageError(f"the release's dtype {dtype_name!r} is unknown; pass --dtype {' or '.join(RUNTIME)}")
    say(f"loading the reference and the release ({dtype_name}, {device})")
    ref, rel = _load(release_dir, source, RUNTIME[dtype_name], device)
    vocab = int(ref.config.vocab_size)
    release_tensors = folder_tensors(release_dir)
    source_tensors = folder_tensors(source.path)
    hardware = hardware_name(device)
    contenders = [Contender(ref), Contender(rel)]
    entries = []
    for batch in batches:
        say(f"batch {batch}: {steps} decode steps per model at context {context}, interleaved")
        ref_s, rel_s = measure_decode(contenders, vocab=vocab, device=device, batch=batch, context=context,
                                      steps=steps, warmup=warmup)
        say(f"batch {batch}: prefill of {prefill_tokens} tokens, interleaved")
        (ref_p, rel_p), length = measure_prefill(contenders, vocab=vocab, device=device, batch=batch,
                                                 tokens=prefill_tokens)
        ours = step_bytes(release_tensors, rel.config, dtype=dtype_name, context=context, batch=batch)
        theirs = step_bytes(source_tensors, ref.config, dtype=dtype_name, context=context, batch=batch)
        ours_flops = token_flops(release_tensors, ref.config, length=length).total
        theirs_flops = token_flops(source_tensors, ref.config, length=length).total
        entry = BenchEntry(
            decode_slowdown=rel_s / ref_s, prefill_slowdown=rel_p / ref_p,
            predicted_decode_slowdown=predicted_decode_slowdown(
                release_tensors, source_tensors, ref.config, dtype=dtype_name, context=context, batch=batch),
            predicted_prefill_slowdown=ours_flops / theirs_flops,
            device=device.split(":")[0], dtype=dtype_name, batch=batch, context=context,
            decode_ms={"reference": ref_s * 1e3, "release": rel_s * 1e3},
            prefill_ms_per_token={"reference": ref_p * 1e3, "release": rel_p * 1e3},
            bytes_per_step={"reference": theirs.total, "release": ours.total},
            flops_per_token={"reference": theirs_flops, "release": ours_flops},
            steps=steps, prefill_tokens=length * batch,
            threads=torch.get_num_threads() if device == "cpu" else 0, hardware=hardware,
            clock=clock_for(device)[0],
        )
        say(f"batch {batch}: decode {entry.decode_ms['reference']:.2f} -> {entry.decode_ms['release']:.2f} ms "
            f"({entry.decode_slowdown:.2f}x, bytes model {entry.predicted_decode_slowdown:.2f}x), prefill "
            f"{entry.prefill_slowdown:.2f}x (FLOPs model {entry.predicted_prefill_slowdown:.2f}x)")
        entries.append(entry)
    return BenchReport(entries)
