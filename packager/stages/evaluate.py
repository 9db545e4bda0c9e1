"""Fidelity of a release against its source: teacher-forced agreement, KL, perplexity, greedy match.

Every figure is reported next to a noise floor: the same metrics between the reference and the
reference computed a second, mathematically identical way (eager attention instead of SDPA, one
sequence at a time), so a release is read against the numerical noise of the platform.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from packager.devices import check_device, hardware_name
from packager.dtypes import RUNTIME, check_dtype
from packager.errors import CheckFailed, UsageError
from packager.formats.checkpoint import Checkpoint
from packager.limits import check
from packager.progress import Progress, reporter
from packager.stages.text import TokenText, builtin_prompts, encode_prompt, left_padded, load_text, sample_text

DEFAULT_EVAL_TOKENS = 8192
DEFAULT_SEQ_LEN = 512
GREEDY_TOKENS = 64
#: Eval text is sampled with this offset added to the seed, so it never shares a seed with calibration.
EVAL_SEED_OFFSET = 1000


@dataclass
class Agreement:
    """Running teacher-forced comparison of two models over the same tokens."""

    tokens: int = 0
    top1_same: int = 0
    kl_sum: float = 0.0
    nll_reference: float = 0.0
    nll_release: float = 0.0

    def add(self, reference_logits: torch.Tensor, release_logits: torch.Tensor, labels: torch.Tensor) -> None:
        ref = reference_logits.float().log_softmax(-1)
        rel = release_logits.float().log_softmax(-1)
        self.tokens += labels.numel()
        # The argmax of the logits themselves (the model's greedy token): log_softmax can round a near-tie
        # into an exact tie and pick the other token.
        self.top1_same += int((reference_logits.argmax(-1) == release_logits.argmax(-1)).sum())
        self.kl_sum += float((ref.exp() * (ref - rel)).sum(-1).sum())
        self.nll_reference -= float(ref.gather(-1, labels.unsqueeze(-1)).sum())
        self.nll_release -= float(rel.gather(-1, labels.unsqueeze(-1)).sum())

    @property
    def top1_agreement(self) -> float:
        return self.top1_same / max(self.tokens, 1)

    @property
    def kl_mean(self) -> float:
        return max(self.kl_sum / max(self.tokens, 1), 0.0)

    def perplexities(self) -> tuple[float, float]:
        n = max(self.tokens, 1)
        return math.exp(self.nll_reference / n), math.exp(self.nll_release / n)


@torch.no_grad()
def compare_logits(reference, release, ids: torch.Tensor, *, batch_size: int = 4) -> Agreement:
    """Teacher-forced comparison over `ids` [sequences, length]: positions 0..L-2 predict 1..L-1."""
    return compare_each(reference, [release], ids, batch_size=batch_size)[0]


@torch.no_grad()
def compare_each(reference, others: list, ids: torch.Tensor, *, batch_size: int = 4) -> list[Agreement]:
    """`compare_logits` of several models against one reference, whose logits are computed once per batch
    (and never held for the whole text: at 8,192 tokens and a 150k vocabulary that would be 5 GB)."""
    agreements = [Agreement() for _ in others]
    device_ref = next(reference.parameters()).device
    for start in range(0, ids.shape[0], batch_size):
        batch = ids[start : start + batch_size]
        ref_logits = reference(input_ids=batch.to(device_ref)).logits[:, :-1].cpu()
        for agreement, other in zip(agreements, others, strict=True):
            device = next(other.parameters()).device
            agreement.add(ref_logits, other(input_ids=batch.to(device)).logits[:, :-1].cpu(), batch[:, 1:])
    return agreements


@torch.no_grad()
def reference_logits(model, ids: torch.Tensor, *, batch_size: int = 4) -> list[torch.Tensor]:
    """The source's logits over `ids`, computed once so several candidates can be compared to them."""
    device = next(model.parameters()).device
    return [model(input_ids=batch.to(device)).logits[:, :-1].float().cpu() for batch in ids.split(batch_size)]


@torch.no_grad()
def compare_to_logits(reference: list[torch.Tensor], release, ids: torch.Tensor, *, batch_size: int = 4
                      ) -> Agreement:
    """Teacher-forced comparison of `release` with logits from `reference_logits` (same batching)."""
    agreement = Agreement()
    device = next(release.parameters()).device
    for ref, batch in zip(reference, ids.split(batch_size), strict=True):
        agreement.add(ref, release(input_ids=batch.to(device)).logits[:, :-1].cpu(), batch[:, 1:])
    return agreement


@torch.no_grad()
def greedy_continuations(model, prompts: list[list[int]], new_tokens: int, *, batch_size: int = 16
                         ) -> list[list[int]]:
    """Each prompt's greedy continuation of exactly `new_tokens` tokens.

    Prompts run `batch_size` at a time, left-padded under an attention mask: one decode step serves the
    whole batch (on a CPU a step costs about as much for 16 rows as for one). The reference, the release
    and the noise floor's model all run the same batches, so their continuations compare like with like.
    """
    device = next(model.parameters()).device
    pad = int(getattr(model.config, "pad_token_id", None) or 0)
    outputs = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_padded(prompts[start : start + batch_size], pad, device)
        width = ids.shape[1]
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, pad_token_id=pad)
        outputs.extend(row.tolist() for row in out[:, width:].cpu())
    return outputs


def matched_prefix(a: list[int], b: list[int]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


@dataclass(frozen=True)
class EvalReport:
    """The `eval` fields (docs/INTERFACE.md#cmd-eval), plus matched-prefix lengths of the greedy continuations."""

    top1_agreement: float
    kl_mean: float
    ppl_reference: float
    ppl_release: float
    greedy_match: float | None
    eval_tokens: int
    coverage: float
    order: int
    noise_floor: dict
    text_source: str
    calibration_overlap: bool
    dtype: str
    device: str
    greedy_prefix: dict = field(default_factory=dict)
    hardware: str | None = None  # the GPU's name, or the CPU model and core count (as bench records)

    def to_json(self) -> dict:
        return asdict(self)


def check_eval_options(*, tokens: int | None = None, seed: int | None = None, dtype: str | None = None,
                       device: str | None = None, min_top1: float | None = None, max_kl: float | None = None
                       ) -> None:
    """Raise UsageError for an eval option out of range or a device this machine lacks (None: not given)."""
    check("--eval-tokens", tokens)
    check("--seed", seed)
    check("--min-top1", min_top1)
    check("--max-kl", max_kl)
    check_dtype(dtype)
    check_device(device)


def load_release(release_dir: Path, *, dtype: torch.dtype, device: str = "cpu"):
    """The release through the real transformers loader, exactly as a user loads it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(release_dir, trust_remote_code=True, dtype=dtype)
    return model.to(device).eval()


def evaluate(
    release_dir: Path, reference: Checkpoint, *, text: str | Path | None = None,
    prompts: str | Path | None = None, tokens: int = DEFAULT_EVAL_TOKENS, seq_len: int = DEFAULT_SEQ_LEN,
    seed: int = 0, dtype: str | None = None, device: str = "cpu", greedy_tokens: int = GREEDY_TOKENS,
    min_top1: float | None = None, max_kl: float | None = None,
    progress: Progress = None,
) -> EvalReport:
    """Measure a release against its source checkpoint.

    Raises:
        UsageError: an option out of range or an unknown or absent device (before anything is loaded),
            the folder is not a release, or the text/prompts cannot be read.
        CheckFailed: a threshold given as `min_top1` / `max_kl` is missed (the report is attached).
    """
    from packager.formats.record import read_record

    check_eval_options(tokens=tokens, seed=seed, dtype=dtype, device=device, min_top1=min_top1, max_kl=max_kl)
    say = reporter(progress)
    record = read_record(release_dir)
    spec = record["transform"]
    dtype_name = dtype or spec.get("dtype", "float32")
    if dtype_name not in RUNTIME:
        raise UsageError(f"the release's dtype {dtype_name!r} is unknown; pass --dtype {' or '.join(RUNTIME)}")
    torch_dtype = RUNTIME[dtype_name]
    say(f"loading the reference and the release ({dtype_name}, {device})")
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(reference.path, dtype=torch_dtype).to(device).eval()
    ref_eager = AutoModelForCausalLM.from_pretrained(
        reference.path, dtype=torch_dtype, attn_implementation="eager").to(device).eval()
    rel = load_release(release_dir, dtype=torch_dtype, device=device)
    tokenizer = reference.load_tokenizer()
    if text is not None:
        eval_text: TokenText = load_text(text, tokenizer, tokens=tokens, seq_len=seq_len)
    else:
        say(f"sampling {tokens} eval tokens from the reference (seed {seed + EVAL_SEED_OFFSET})")
        eval_text = sample_text(ref, tokenizer, kind="eval", tokens=tokens, seq_len=seq_len,
                                seed=seed + EVAL_SEED_OFFSET,
                                cache_key=f"{json.dumps(reference.file_digests(), sort_keys=True)}/{dtype_name}",
                                progress=say)
    calibration = record.get("calibration") or {}
    overlap = calibration.get("text_digest") == eval_text.digest or (
        text is not None and calibration.get("source") == eval_text.source)
    say(f"teacher-forced comparison over {eval_text.tokens} tokens")
    agreement, floor = compare_each(ref, [rel, ref_eager], eval_text.ids)
    ppl_ref, ppl_rel = agreement.perplexities()
    greedy, prefix = None, {}
    if tokenizer is not None:
        say("greedy continuations of the prompt set")
        prompt_texts = builtin_prompts("greedy") if prompts is None else _read_prompts(prompts)
        encoded = [encode_prompt(tokenizer, p) for p in prompt_texts]
        out_ref = greedy_continuations(ref, encoded, greedy_tokens)
        out_rel = greedy_continuations(rel, encoded, greedy_tokens)
        out_eager = greedy_continuations(ref_eager, encoded, greedy_tokens)
        greedy = sum(a == b for a, b in zip(out_ref, out_rel, strict=True)) / len(encoded)
        prefix = {"release": [matched_prefix(a, b) for a, b in zip(out_ref, out_rel, strict=True)],
                  "noise_floor": [matched_prefix(a, b) for a, b in zip(out_ref, out_eager, strict=True)],
                  "new_tokens": greedy_tokens}
        floor_greedy = sum(a == b for a, b in zip(out_ref, out_eager, strict=True)) / len(encoded)
    else:
        floor_greedy = None
    report = EvalReport(
        top1_agreement=agreement.top1_agreement, kl_mean=agreement.kl_mean, ppl_reference=ppl_ref,
        ppl_release=ppl_rel, greedy_match=greedy, eval_tokens=agreement.tokens,
        coverage=spec["coverage"], order=spec["order"],
        noise_floor={"top1_agreement": floor.top1_agreement, "kl_mean": floor.kl_mean,
                     "greedy_match": floor_greedy, "method": "reference with eager attention vs SDPA"},
        text_source=eval_text.source, calibration_overlap=bool(overlap), dtype=dtype_name, device=device,
        greedy_prefix=prefix, hardware=hardware_name(device),
    )
    misses = threshold_misses(report.to_json(), min_top1=min_top1, max_kl=max_kl)
    if misses:
        raise CheckFailed("fidelity below threshold: " + "; ".join(misses), details=report.to_json())
    return report


def _read_prompts(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"prompts file '{path}' not found: pass a text file with one prompt per line")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise UsageError(f"prompts file '{path}' is empty")
    return lines


def threshold_misses(evaluation: dict, *, min_top1: float | None, max_kl: float | None) -> list[str]:
    """The fidelity thresholds an eval result (`EvalReport.to_json()`) misses, one phrase each."""
    misses = []
    if min_top1 is not None and evaluation["top1_agreement"] < min_top1:
        misses.append(f"top-1 agreement {evaluation['top1_agreement']:.4f} < --min-top1 {min_top1}")
    if max_kl is not None and evaluation["kl_mean"] > max_kl:
        misses.append(f"KL {evaluation['kl_mean']:.5f} > --max-kl {max_kl}")
    return misses
