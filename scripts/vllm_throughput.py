"""Decode throughput of a source and its release in vLLM (offline `LLM`), side by side in one process.

Run with the vLLM environment's python (scripts/setup_vllm.sh), one CPU thread:

    OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 \\
        .venv-vllm/bin/python scripts/vllm_throughput.py SOURCE RELEASE --dtype float32

Both engines live in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) and are timed alternately, so drift
on a shared machine hits both alike. A measurement generates 1 token (the prefill) and 1 + NEW tokens
for `batch` 32-token prompts; decode tokens/s = batch * NEW / (t(1 + NEW) - t(1)), the best of REPEATS.
The clock is the process's CPU time (all its threads; with one OMP thread the compute is one thread),
which other jobs on the machine do not inflate; wall-clock figures are printed beside it. Prints one JSON
line starting with RESULT.
"""

from __future__ import annotations

import argparse
import json
import os
import time

NEW_TOKENS = 32
REPEATS = 3
PROMPT_TOKENS = 32


def _prompts(batch: int) -> list:
    from vllm.inputs import TokensPrompt

    return [TokensPrompt(prompt_token_ids=[1] + [(37 * i + 11 * b) % 5000 + 100 for i in range(PROMPT_TOKENS - 1)])
            for b in range(batch)]


def _timed(llm, batch: int, tokens: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one greedy generation of `tokens` tokens for `batch` prompts."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True, detokenize=False)
    cpu, wall = time.process_time(), time.perf_counter()
    llm.generate(_prompts(batch), params, use_tqdm=False)
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(source: str, release: str, dtype: str, eager: bool, batches: tuple[int, ...]) -> dict:
    from vllm import LLM

    engines = {name: LLM(model=path, trust_remote_code=True, dtype=dtype, skip_tokenizer_init=True,
                         max_model_len=512, enforce_eager=eager, max_num_seqs=max(batches), seed=0,
                         enable_prefix_caching=False)
               for name, path in (("source", source), ("release", release))}
    results: dict = {}
    for batch in batches:
        for engine in engines.values():  # warm-up, and compilation for these shapes
            _timed(engine, batch, 1 + NEW_TOKENS)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
        for _ in range(REPEATS):
            for name, engine in engines.items():
                prefill_cpu, prefill_wall = _timed(engine, batch, 1)
                total_cpu, total_wall = _timed(engine, batch, 1 + NEW_TOKENS)
                samples[name].append((total_cpu - prefill_cpu, total_wall - prefill_wall))
        for name, pairs in samples.items():
            results[f"{name}/batch{batch}"] = {
                "decode_tokens_per_s_cpu": batch * NEW_TOKENS / min(cpu for cpu, _ in pairs),
                "decode_tokens_per_s_wall": batch * NEW_TOKENS / min(wall for _, wall in pairs)}
        results[f"slowdown/batch{batch}"] = {
            clock: results[f"source/batch{batch}"][f"decode_tokens_per_s_{clock}"]
            / results[f"release/batch{batch}"][f"decode_tokens_per_s_{clock}"] for clock in ("cpu", "wall")}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source")
    parser.add_argument("release")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--eager", action="store_true", help="no torch.compile (vLLM's default compiles)")
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default 1 and 32)")
    args = parser.parse_args()
    results = measure(args.source, args.release, args.dtype, args.eager, tuple(args.batch or (1, 32)))
    import torch
    import transformers
    import vllm

    print("RESULT " + json.dumps({
        "dtype": args.dtype, "eager": args.eager, "new_tokens": NEW_TOKENS, "prompt_tokens": PROMPT_TOKENS,
        "repeats": REPEATS, "omp_threads": os.environ.get("OMP_NUM_THREADS"), "results": results,
        "versions": {"vllm": vllm.__version__, "torch": torch.__version__, "transformers": transformers.__version__}}))


if __name__ == "__main__":
    main()
