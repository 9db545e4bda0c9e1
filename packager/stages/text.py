"""Text for calibration and evaluation: built-in prompt sets, self-sampled text, user files.

Calibration and evaluation use different prompt sets and different seeds, so default eval text never
repeats calibration text. Everything returns token ids [sequences, length]: models without a
tokenizer are calibrated and evaluated on ids alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from packager.errors import UsageError
from packager.formats.files import sha256_text
from packager.progress import Progress, reporter

PROMPT_SETS = ("calibration", "eval", "greedy")


def builtin_prompts(kind: str) -> list[str]:
    """The prompt set written for this project: `calibration`, `eval` or `greedy`."""
    if kind not in PROMPT_SETS:
        raise ValueError(f"unknown prompt set {kind!r}")
    text = resources.files("packager.stages.data").joinpath(f"{kind}_prompts.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class TokenText:
    """Token ids [sequences, length] and where they came from."""

    ids: torch.Tensor
    source: str
    digest: str

    @property
    def tokens(self) -> int:
        return int(self.ids.numel())


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """A prompt as the model expects it: through the chat template when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        if hasattr(encoded, "keys"):
            encoded = encoded["input_ids"]
        return list(encoded)
    return tokenizer(prompt)["input_ids"]


def left_padded(prompts: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths as one batch: ids left-padded with `pad`, and the attention mask."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask


def _digest_ids(ids: torch.Tensor) -> str:
    return sha256_text(",".join(map(str, ids.flatten().tolist())))


def fit_length(config, seq_len: int) -> int:
    """`seq_len`, capped at the model's context length."""
    limit = getattr(config, "max_position_embeddings", None)
    return min(seq_len, int(limit)) if limit else seq_len


@torch.no_grad()
def sample_text(
    model, tokenizer, *, kind: str, tokens: int, seq_len: int, seed: int, batch_size: int = 32,
    cache_key: str | None = None, progress: Progress = None,
) -> TokenText:
    """Sample `tokens` tokens of text from the model itself, starting from the `kind` prompt set.

    Each sequence is a prompt followed by sampled tokens (temperature 1, nucleus 0.95, EOS suppressed
    until the sequence is full), truncated to `seq_len`. With `cache_key` (which must identify the
    model's weights and dtype exactly) the result is kept in the unswift cache, so calibration, auto
    coverage and eval of the same source do not sample the same text twice.
    """
    path = None
    if cache_key is not None:
        from packager.formats.gguf import cache_root

        label = json.dumps([cache_key, kind, tokens, seq_len, seed, batch_size, fit_length(model.config, seq_len),
                            SAMPLER])
        path = cache_root() / "text" / f"{sha256_text(label)[:32]}.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            return TokenText(torch.tensor(saved["ids"]), saved["source"], saved["digest"])
    text = _sample_text(model, tokenizer, kind=kind, tokens=tokens, seq_len=seq_len, seed=seed,
                        batch_size=batch_size, progress=progress)
    if path is not None:
        from packager.formats.atomic import write_text_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps({"ids": text.ids.tolist(), "source": text.source,
                                            "digest": text.digest}))
    return text


def _sample_text(model, tokenizer, *, kind: str, tokens: int, seq_len: int, seed: int, batch_size: int,
                 progress: Progress = None) -> TokenText:
    seq_len = fit_length(model.config, seq_len)
    sequences = max(1, -(-tokens // seq_len))
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    prompts: list[list[int]] = []
    if tokenizer is not None:
        texts = builtin_prompts(kind)
        for i in range(sequences):
            prompts.append(encode_prompt(tokenizer, texts[i % len(texts)]))
    else:
        vocab = int(model.config.vocab_size)
        for _ in range(sequences):
            prompts.append(torch.randint(0, vocab, (8,), generator=generator).tolist())
    rows = []
    ticker = _Ticker(progress, steps=sum(max(1, seq_len - min(len(p) for p in prompts[s : s + batch_size]))
                                         for s in range(0, sequences, batch_size)))
    for start in range(0, sequences, batch_size):
        batch = prompts[start : start + batch_size]
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        pad = int(getattr(model.config, "pad_token_id", None) or 0)
        input_ids, attention = left_padded(batch, pad, device)
        width = input_ids.shape[1]
        new = max(1, seq_len - min(len(p) for p in batch))
        out = model.generate(
            input_ids=input_ids, attention_mask=attention, do_sample=True, temperature=1.0, top_p=1.0,
            top_k=0, max_new_tokens=new, min_new_tokens=new, pad_token_id=pad, stopping_criteria=[ticker],
            logits_processor=[Nucleus(TOP_P)],
        )
        for prompt, row in zip(batch, out[:, width:].cpu(), strict=True):
            rows.append(torch.tensor(prompt + row.tolist())[:seq_len])
    ids = torch.stack(rows)
    return TokenText(ids, f"self-sampled:{kind}:seed={seed}", _digest_ids(ids))


#: Nucleus mass of self-sampled text (temperature 1).
TOP_P = 0.95
#: Names how self-sampled text is drawn, in the cache's key (a change of sampler never reuses old text).
SAMPLER = "nucleus-head-1024"


class Nucleus:
    """Nucleus (top-p) filtering that sorts only the head of the distribution.

    transformers' own top-p warper sorts the whole vocabulary at every decode step: at batch 32 over
    SmolLM2's 49,152 tokens that was two thirds of each step on the 2-core machine. The nucleus of a
    language model rarely holds more than a few hundred tokens, so the `head` most probable ones are
    taken with `topk`; only rows whose head holds less than `p` of the mass are sorted in full. The kept
    set is the warper's: the tokens, in descending probability, whose mass above them is below `p`
    (at least the most probable one).
    """

    def __init__(self, p: float, head: int = 1024) -> None:
        self.p, self.head = p, head

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.float().softmax(-1)
        top, index = probs.topk(min(self.head, scores.shape[-1]), dim=-1)  # descending
        filtered = self._keep(scores, top, index)
        short = top.sum(-1) < self.p
        if bool(short.any()):  # a flat distribution: its nucleus is wider than the head
            whole, order = probs[short].sort(-1, descending=True)
            filtered[short] = self._keep(scores[short], whole, order)
        return filtered

    def _keep(self, scores: torch.Tensor, top: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        keep = (top.cumsum(-1) - top) < self.p
        kept = torch.where(keep, scores.gather(-1, index), -torch.inf)
        return torch.full_like(scores, -torch.inf).scatter_(-1, index, kept)


class _Ticker:
    """A stopping criterion that never stops: it reports the sampling's progress and an estimate of the time
    left every `every` seconds (self-sampling is the longest silent step of a calibration or an eval)."""

    def __init__(self, progress: Progress, *, steps: int, every: float = 15.0) -> None:
        self.say, self.steps, self.every = reporter(progress), steps, every
        self.done, self.started, self.last = 0, time.monotonic(), time.monotonic()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: object) -> torch.Tensor:
        self.done += 1
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            left = (now - self.started) / self.done * max(0, self.steps - self.done)
            self.say(f"  sampled {self.done}/{self.steps} decode steps, about {_duration(left)} left")
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _read_texts(path: Path) -> list[str]:
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise UsageError(f"text folder '{path}' holds no .txt files")
        return [f.read_text(errors="replace") for f in files]
    if not path.is_file():
        raise UsageError(f"text source '{path}' not found: pass a text file, a .jsonl file or a folder of .txt")
    if path.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UsageError(f"'{path}' line {number} is not JSON: {err.msg}") from err
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise UsageError(f"'{path}' line {number} has no string field 'text'")
            texts.append(record["text"])
        return texts
    return [path.read_text(errors="replace")]


def load_text(path: str | Path, tokenizer, *, tokens: int, seq_len: int) -> TokenText:
    """Tokenise a user's text source into sequences of `seq_len` tokens (at most `tokens` in all)."""
    path = Path(path)
    texts = [t for t in _read_texts(path) if t.strip()]
    if not texts:
        raise UsageError(f"text source '{path}' is empty: give at least {seq_len} tokens of text")
    if tokenizer is None:
        raise UsageError(f"cannot read text '{path}': the checkpoint has no tokenizer; omit the text option")
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text)["input_ids"])
        if eos is not None:
            stream.append(eos)
    length = min(seq_len, len(stream))
    if length < 16:
        raise UsageError(f"text source '{path}' has only {len(stream)} tokens; give at least 16")
    count = min(len(stream) // length, max(1, -(-tokens // length)))
    ids = torch.tensor(stream[: count * length]).view(count, length)
    return TokenText(ids, f"file:{path.name}", _digest_ids(ids))
