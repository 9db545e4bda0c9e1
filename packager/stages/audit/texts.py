"""The texts of an audit: held-out text to compare rebuilt models on, and the attacker's own text.

The two never overlap and neither is the calibration text: the held-out text is the built-in eval
prompt set, the attacker's text the public calibration and greedy prompt sets shipped with unswift
(anyone can read them). Without a tokenizer both are seeded token ids.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from packager.formats.release import ReleaseFiles

#: Tokens of held-out text (the built-in eval prompts) on which rebuilt models are compared.
HELDOUT_TOKENS = 384
#: Seeds of the text the attacker samples from the release (data for the density and learning attacks).
ATTACKER_SEED = 2000
#: Length of the attacker's sampled sequences (short: sampling is the slow part on a CPU).
ATTACKER_SEQ_LEN = 64
#: Length of the sequences the truncation attacker samples from the release.
TRUNCATION_SEQ_LEN = 256
#: Files whose presence means the release ships a tokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def heldout_ids(release: ReleaseFiles, tokens: int = HELDOUT_TOKENS) -> tuple[torch.Tensor, str]:
    """Held-out text for comparing models: the built-in eval prompts, or seeded random ids."""
    from packager.stages.text import builtin_prompts

    tokenizer = _tokenizer(release)
    if tokenizer is None:
        generator = torch.Generator().manual_seed(ATTACKER_SEED + 1)
        vocab = int(release.config["vocab_size"])
        length = min(128, tokens)
        return torch.randint(0, vocab, (max(1, tokens // length), length), generator=generator), "random ids"
    return _prompt_ids(tokenizer, builtin_prompts("eval"), tokens), "built-in eval prompts"


@torch.no_grad()
def attacker_ids(release: ReleaseFiles, model, tokens: int) -> tuple[torch.Tensor, str]:
    """The attacker's own text: the public prompt sets shipped with unswift (never the calibration text).

    Without a tokenizer, token sequences sampled from the release itself from random prompts (seeded).
    """
    from packager.stages.text import builtin_prompts, sample_text

    tokenizer = _tokenizer(release)
    if tokenizer is None:
        text = sample_text(model, None, kind="greedy", tokens=tokens, seq_len=ATTACKER_SEQ_LEN,
                           seed=ATTACKER_SEED)
        return text.ids, text.source
    prompts = builtin_prompts("calibration") + builtin_prompts("greedy")
    return _prompt_ids(tokenizer, prompts, tokens), "built-in calibration and greedy prompts"


@torch.no_grad()
def attacker_text(release: ReleaseFiles, model, tokens: int, *, seq_len: int | None = None,
                  progress=None) -> torch.Tensor:
    """The text the truncation attacker measures its truncations on: `tokens` tokens of its own.

    The public prompt sets (as `attacker_ids`) when they hold that many; beyond them (the full budget
    asks for 2,048), text it samples from the release it holds (greedy prompt set, its own seed,
    sequences of `TRUNCATION_SEQ_LEN`, or `seq_len` when shorter).
    """
    from packager.stages.text import builtin_prompts, sample_text

    tokenizer = _tokenizer(release)
    if tokenizer is not None:
        public = _prompt_ids(tokenizer, builtin_prompts("calibration") + builtin_prompts("greedy"), tokens)
        if public.numel() >= tokens:
            return public
    length = min(TRUNCATION_SEQ_LEN, seq_len or TRUNCATION_SEQ_LEN)
    if progress is not None:
        progress(f"  truncation: sampling {tokens} tokens of the attacker's text from the release")
    return sample_text(model, tokenizer, kind="greedy", tokens=tokens, seq_len=length,
                       seed=ATTACKER_SEED, progress=progress).ids


def _prompt_ids(tokenizer, prompts: list[str], tokens: int) -> torch.Tensor:
    """The prompts' tokens, concatenated, cut to `tokens` and folded into rows of at most 128."""
    stream: list[int] = []
    for prompt in prompts:
        stream.extend(tokenizer(prompt)["input_ids"])
    stream = stream[:tokens]
    length = min(128, len(stream))
    count = len(stream) // length
    return torch.tensor(stream[: count * length]).view(count, length)


def _tokenizer(release: ReleaseFiles):
    if not any((release.path / name).is_file() for name in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    # The release's config names its own model type (`unswift_<family>`), defined by the release's code: without
    # trust_remote_code transformers warns that it instantiates an empty model type. The audit runs that code
    # anyway (it loads the release through its own loader), and the tokenizer itself is the source's.
    return AutoTokenizer.from_pretrained(release.path, trust_remote_code=True)


@torch.no_grad()
def capture_io(model, units: list[str], ids: torch.Tensor, *, inputs: Iterable[int], outputs: Iterable[int] = ()
               ) -> dict[int, tuple[torch.Tensor, torch.Tensor | None]]:
    """Inputs of the release's MLP units `inputs` (and outputs of `outputs`) on `ids`, float32 [T, H].

    What the attacker records by running the release on its own text: forward hooks on the units, one
    sequence at a time.
    """
    wanted_out = set(outputs)
    wanted = sorted(set(inputs) | wanted_out)
    seen: dict[int, tuple[list, list]] = {i: ([], []) for i in wanted}
    handles = []
    for index in wanted:
        def hook(_module, args, result, index=index):
            seen[index][0].append(args[0].reshape(-1, args[0].shape[-1]).float())
            if index in wanted_out:
                seen[index][1].append(result.reshape(-1, result.shape[-1]).float())

        handles.append(model.get_submodule(units[index]).register_forward_hook(hook))
    try:
        for row in ids:
            model(input_ids=row.unsqueeze(0))
    finally:
        for handle in handles:
            handle.remove()
    return {i: (torch.cat(xs) if xs else torch.zeros(0), torch.cat(ys) if ys else None)
            for i, (xs, ys) in seen.items()}
