"""Memory and fidelity of a release after weight-only quantisation, against the source quantised alike.

    OMP_NUM_THREADS=1 python scripts/quantised_fidelity.py SOURCE RELEASE --scheme torchao-int8

Schemes: `torchao-int8` (torchao Int8WeightOnlyConfig on every nn.Linear, Θ included),
`torchao-int8-theta-bf16` (the same on every linear but Θ, which is held in bfloat16), `quanto-int8`
(optimum-quanto qint8 weights, then freeze). The source gets the same scheme (it has no Θ).

Text: the source's own greedy continuations (float32, 48 tokens) of the first `--prompts` packaged eval
prompts, in its chat template, teacher-forced through all four models. Memory: the bytes `torch.save`
writes for each model's state dict (quantised tensors at their stored size). Needs torchao /
optimum-quanto (not unswift dependencies). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = Path(__file__).resolve().parent.parent / "packager" / "stages" / "data" / "eval_prompts.txt"
NEW_TOKENS = 48
PAIRS = (("source", "release"), ("source_q", "release_q"), ("source", "source_q"), ("release", "release_q"),
         ("source", "release_q"))


def quantise(model, scheme: str):
    if scheme in ("torchao-int8", "torchao-int8-theta-bf16"):
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        keep_theta = scheme.endswith("theta-bf16")
        quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda module, name: isinstance(module, torch.nn.Linear)
                  and not (keep_theta and name.endswith("mlp.theta")))
        if keep_theta:
            for name, module in model.named_modules():
                if name.endswith("mlp.theta"):
                    module.to(torch.bfloat16)
    elif scheme == "quanto-int8":
        from optimum.quanto import freeze, qint8, quantize

        quantize(model, weights=qint8)
        freeze(model)
    else:
        raise ValueError(f"unknown scheme {scheme!r}")
    return model


def stored_bytes(model) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def load(path: str):
    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32).eval()


def texts(source_model, tokenizer, count: int) -> list[torch.Tensor]:
    prompts = [line.strip() for line in PROMPTS.read_text().splitlines() if line.strip()][:count]
    out = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out.append(source_model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source")
    parser.add_argument("release")
    parser.add_argument("--scheme", default="torchao-int8")
    parser.add_argument("--prompts", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = {"source": load(args.source), "release": load(args.release)}
    sequences = texts(models["source"], AutoTokenizer.from_pretrained(args.source), args.prompts)
    started = time.process_time()
    models["source_q"] = quantise(load(args.source), args.scheme)
    models["release_q"] = quantise(load(args.release), args.scheme)
    quantise_seconds = time.process_time() - started
    sums = {pair: [0.0, 0, 0] for pair in PAIRS}  # KL sum, top-1 matches, tokens
    with torch.no_grad():
        for ids in sequences:
            logp = {name: F.log_softmax(model(ids).logits[0, :-1].float(), -1) for name, model in models.items()}
            for a, b in PAIRS:
                kl = (logp[a].exp() * (logp[a] - logp[b])).sum(-1)
                sums[(a, b)][0] += float(kl.sum())
                sums[(a, b)][1] += int((logp[a].argmax(-1) == logp[b].argmax(-1)).sum())
                sums[(a, b)][2] += kl.numel()
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    for module in ("torchao", "optimum.quanto"):
        try:
            versions[module] = getattr(__import__(module, fromlist=["_"]), "__version__", "?")
        except ImportError:
            pass
    theta = next(m for n, m in models["release_q"].named_modules() if n.endswith("mlp.theta"))
    print(json.dumps({
        "scheme": args.scheme, "bytes": {name: stored_bytes(model) for name, model in models.items()},
        "fidelity": {f"{a} vs {b}": {"kl_mean": kl / n, "top1": hits / n, "tokens": n}
                     for (a, b), (kl, hits, n) in sums.items()},
        "theta_weight": type(theta.weight).__name__, "quantise_cpu_s": quantise_seconds, "versions": versions},
        indent=1))


if __name__ == "__main__":
    main()
