"""bf16 fidelity, both ways, against the platform's own bf16 noise.

Prints one JSON object: teacher-forced top-1 agreement and KL over the same held-out tokens for
  floor:            bf16 original vs fp32 original (what bf16 itself costs),
  fp32_release_bf16: bf16 original vs the fp32 release loaded with dtype=torch.bfloat16,
  bf16_release:     bf16 original vs a release converted with --dtype bfloat16.
Acceptance (issue 3): each release's top-1 >= floor top-1 - 0.002.

    python benchmarks/bf16_agreement.py CHECKPOINT FP32_RELEASE BF16_RELEASE [--tokens 8192]
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import AutoModelForCausalLM

from packager.formats.checkpoint import open_checkpoint
from packager.stages.evaluate import EVAL_SEED_OFFSET, compare_logits, load_release
from packager.stages.text import sample_text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("fp32_release")
    parser.add_argument("bf16_release")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source = open_checkpoint(args.checkpoint)
    ref32 = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
    ref16 = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.bfloat16).eval()
    text = sample_text(ref32, source.load_tokenizer(), kind="eval", tokens=args.tokens, seq_len=512,
                       seed=args.seed + EVAL_SEED_OFFSET,
                       cache_key=f"{json.dumps(source.file_digests(), sort_keys=True)}/float32")
    results = {"tokens": text.tokens, "text": text.source}
    with torch.no_grad():
        floor = compare_logits(ref16, ref32, text.ids)
        results["floor"] = {"top1": floor.top1_agreement, "kl": floor.kl_mean}
        for name, path in (("fp32_release_bf16", args.fp32_release), ("bf16_release", args.bf16_release)):
            release = load_release(path, dtype=torch.bfloat16)
            measured = compare_logits(ref16, release, text.ids)
            results[name] = {"top1": measured.top1_agreement, "kl": measured.kl_mean,
                             "meets": measured.top1_agreement >= floor.top1_agreement - 0.002}
            del release
    print(json.dumps(results))


if __name__ == "__main__":
    main()
