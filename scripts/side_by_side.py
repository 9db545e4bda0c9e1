"""Answer one prompt with the original checkpoint and with the release, each loaded as a user would.

Usage: python scripts/side_by_side.py CHECKPOINT RELEASE [PROMPT]
The release is loaded with AutoModelForCausalLM.from_pretrained(RELEASE, trust_remote_code=True) in
this fresh process; nothing from unswift is imported.
"""

from __future__ import annotations

import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging


def answer(model, tokenizer, prompt: str) -> tuple[str, float]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    start = time.perf_counter()
    out = model.generate(**ids, max_new_tokens=48, do_sample=False)
    seconds = time.perf_counter() - start
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip(), seconds


def main() -> None:
    checkpoint, release = sys.argv[1], sys.argv[2]
    prompt = sys.argv[3] if len(sys.argv) > 3 else "What is the capital of France, and what is it famous for?"
    logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(release, trust_remote_code=True)  # no prompt: the code is ours
    original = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    converted = AutoModelForCausalLM.from_pretrained(release, trust_remote_code=True, dtype="auto")
    print("\nSide by side: the original checkpoint and the release, each loaded with transformers in this "
          "process, answer one prompt (greedy, 48 new tokens; times are wall time on this machine).\n")
    print(f"prompt: {prompt}\n")
    for name, model in (("original", original), ("release ", converted)):
        text, seconds = answer(model, tokenizer, prompt)
        print(f"[{name}] ({type(model).__name__}, {seconds:.1f} s) {text}\n")


if __name__ == "__main__":
    main()
