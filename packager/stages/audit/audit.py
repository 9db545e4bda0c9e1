"""`unswift audit`: attack a release with the known attacks, scan it for leaks, and report what was found.

TaylorMLP is reversible by algebra; the audit measures how much of the source an attacker gets back,
how fast, and how good a model rebuilt from it is, so that the card quotes measurements, not claims.

- Attacks (`packager.stages.audit.attacks`) see only the release. The source checkpoint (`reference`) is used
  afterwards to score them: `recovered_fraction` counts the elements of the protected MLP weights
  (gate rows, up rows and down columns of expanded channels) within 1 % relative error of the original,
  after aligning channels by their gate rows (an attacker need not align: MLP channels are
  permutation-invariant). Without a reference those fields are null; the rebuilt model is then compared
  with the release itself.
- The leak scan hashes every row and column of every released tensor (sign-canonicalised: first
  nonzero element positive) and looks up every source vector the release declares protected, so it
  finds exact copies, sign flips and permuted copies in one pass over the files. Scaled copies are
  what the attacks measure.
- `protected_param_fraction` uses the same hashes over every source tensor: an element is unprotected
  if its row or its column appears in the release as it is (exactly or up to sign and permutation).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from packager.errors import CheckFailed, UsageError
from packager.maths.series.activations import get_activation
from packager.stages.audit.attacks import ATTACK_NAMES, RecoveredMLP, ReleasedMLP, by_group, merge_extras

#: An element is recovered when |recovered - original| <= TOLERANCE * |original|.
TOLERANCE = 0.01
#: Tokens of held-out text (the built-in eval prompts) on which rebuilt models are compared.
HELDOUT_TOKENS = 384
#: Seeds of the text the attacker samples from the release (data for the density and learning attacks).
ATTACKER_SEED = 2000
#: Length of the attacker's sampled sequences (short: sampling is the slow part on a CPU).
ATTACKER_SEQ_LEN = 64
#: At most this many source vectors are named per leaking tensor.
LEAK_EXAMPLES = 20

Progress = Callable[[str], None] | None


@dataclass(frozen=True)
class LearningBudget:
    """The compute the `learning` attack may spend: its stated budget, reported with its result."""

    steps: int = 300
    tokens: int = 2048
    layers: tuple[int, ...] | None = None  # MLP units attacked; None: the middle one
    lr: float = 3e-3
    seed: int = 0


@dataclass(frozen=True)
class AttackResult:
    """One attack's outcome (CONTRACT `audit.attacks[]`), plus diagnostics in `extra`."""

    name: str
    recovered_fraction: float | None
    relative_error: float | None
    seconds: float
    rebuilt_top1: float | None
    rebuilt_compared_with: str  # "source" or "release"
    recovered_fraction_up_to_scale: float | None = None
    units_attacked: int = 0
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        data = asdict(self)
        extra = data.pop("extra")
        return {**data, **extra}


@dataclass(frozen=True)
class AuditReport:
    """What `unswift audit` found (CONTRACT `audit`)."""

    protected_param_fraction: float | None
    attacks: list[AttackResult]
    leaks: list[dict] | None
    reference: str | None
    heldout_tokens: int
    release_top1: float | None = None  # the release itself against the source, on the same tokens
    tolerance: float = TOLERANCE
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "protected_param_fraction": self.protected_param_fraction,
            "attacks": [attack.to_json() for attack in self.attacks],
            "leaks": self.leaks,
            "reference": self.reference,
            "heldout_tokens": self.heldout_tokens,
            "release_top1": self.release_top1,
            "tolerance": self.tolerance,
            "notes": self.notes,
        }

    def max_recovered(self) -> float | None:
        values = [a.recovered_fraction for a in self.attacks if a.recovered_fraction is not None]
        return max(values) if values else None


# -- the release, as an attacker reads it -----------------------------------------------------------


class ReleaseFiles:
    """A release folder: its spec, record and tensors (read lazily, tensor by tensor)."""

    def __init__(self, release_dir: Path) -> None:
        from packager.formats.record import read_record

        self.path = Path(release_dir)
        if not (self.path / "config.json").is_file():
            raise UsageError(f"'{release_dir}' is not an unswift release: it has no config.json")
        self.config = json.loads((self.path / "config.json").read_text())
        self.spec = self.config.get("unswift")
        if not self.spec:
            raise UsageError(f"'{release_dir}' is not an unswift release: its config.json has no 'unswift'")
        self.record = read_record(self.path)
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.key_to_file = {key: self.path / name for key, name in weight_map.items()}
        else:
            self.key_to_file = {}
            for file in sorted(self.path.glob("*.safetensors")):
                with safe_open(str(file), framework="pt") as handle:
                    self.key_to_file.update({key: file for key in handle.keys()})
        if not self.key_to_file:
            raise UsageError(f"'{release_dir}' holds no safetensors weights")

    def tensor(self, key: str) -> torch.Tensor:
        with safe_open(str(self.key_to_file[key]), framework="pt") as handle:
            return handle.get_tensor(key)

    def has(self, key: str) -> bool:
        return key in self.key_to_file

    @property
    def units(self) -> list[str]:
        """The prefix (module path) of every MLP unit, in release order."""
        prefix = self.record.get("transform", {}).get("layers_prefix", "model.layers")
        return [entry.get("unit", f"{prefix}.{i}.mlp") for i, entry in enumerate(self.spec["layers"])]

    def released_mlp(self, index: int) -> ReleasedMLP:
        spec, entry, name = self.spec, self.spec["layers"][index], self.units[index] + "."
        out_bias = self.tensor(name + "out_bias").double() if self.has(name + "out_bias") else None
        return ReleasedMLP(
            in_weight=self.tensor(name + "in_proj.weight").double(),
            in_bias=self.tensor(name + "in_proj.bias").double(),
            theta=self.tensor(name + "theta").double(), out_bias=out_bias,
            intermediate=int(entry["intermediate"]), expanded=int(entry["expanded"]),
            order=int(spec["order"]), basis=spec["basis"], extrapolation=spec["extrapolation"],
            fit=spec["fit"], activation=get_activation(spec["hidden_act"]), gated=bool(spec["gated"]),
            groups=tuple((int(g["channels"]), int(g["order"])) for g in entry.get("groups") or ()),
        )


# -- scoring recovered weights against the source ---------------------------------------------------


@dataclass
class _Tally:
    """Running counts over the protected elements of every attacked unit."""

    elements: int = 0
    within: int = 0
    within_up_to_scale: int = 0
    error_sq: float = 0.0
    norm_sq: float = 0.0

    def add(self, recovered: torch.Tensor, original: torch.Tensor, *,
            scaled: torch.Tensor | None = None) -> None:
        self.elements += original.numel()
        self.within += int(((recovered - original).abs() <= TOLERANCE * original.abs()).sum())
        other = recovered if scaled is None else scaled
        self.within_up_to_scale += int(((other - original).abs() <= TOLERANCE * original.abs()).sum())
        self.error_sq += float((recovered - original).pow(2).sum())
        self.norm_sq += float(original.pow(2).sum())

    @property
    def fraction(self) -> float | None:
        return self.within / self.elements if self.elements else None

    @property
    def fraction_up_to_scale(self) -> float | None:
        return self.within_up_to_scale / self.elements if self.elements else None

    @property
    def relative_error(self) -> float | None:
        return (self.error_sq / self.norm_sq) ** 0.5 if self.norm_sq > 0 else None


def _unit_rows(rows: torch.Tensor) -> torch.Tensor:
    return rows / rows.norm(dim=-1, keepdim=True).clamp(min=1e-300)


def expanded_source_channels(released: ReleasedMLP, source_gate: torch.Tensor) -> torch.Tensor:
    """Source channel of each released expanded channel: released gate rows are scaled source rows."""
    cos = _unit_rows(released.gate_rows[: released.expanded]) @ _unit_rows(source_gate.double()).T
    return cos.abs().argmax(-1)


def score_unit(tally: _Tally, recovered: RecoveredMLP, source, protected: torch.Tensor) -> None:
    """Add one unit's protected elements to the tally, each source channel aligned to its best match.

    The per-channel scale a (up row times a, down column over a) leaves the MLP's function unchanged;
    `within_up_to_scale` counts elements after removing the best such scale per channel.
    """
    if protected.numel() == 0:
        return
    original_gate = source.gate.double()[protected]
    cos = _unit_rows(original_gate) @ _unit_rows(recovered.gate.double()).T  # [P, I']
    match = cos.abs().argmax(-1)
    gate = recovered.gate.double()[match]
    tally.add(gate, original_gate)
    down = recovered.down.double()[:, match]
    original_down = source.down.double()[:, protected]
    if recovered.up is not None and source.up is not None:
        up = recovered.up.double()[match]
        original_up = source.up.double()[protected]
        scale = (up * original_up).sum(-1) / original_up.pow(2).sum(-1).clamp(min=1e-300)
        scale = torch.where(scale.abs() > 1e-12, scale, torch.ones_like(scale))
        tally.add(up, original_up, scaled=up / scale.unsqueeze(-1))
        tally.add(down, original_down, scaled=down * scale.unsqueeze(0))
    else:
        tally.add(down, original_down)


# -- leak scan and protected parameters: hashes of rows and columns ---------------------------------


_HASH_LENGTH = 1 << 17


def _hash_weights() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0x756E7377)
    draw = lambda: torch.randint(-(2**62), 2**62, (_HASH_LENGTH,), generator=generator)  # noqa: E731
    return draw(), draw()


_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
             torch.float64: torch.int64}


def vector_keys(matrix: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]
                ) -> list[tuple[int, int, int]]:
    """A 128-bit key per row of `matrix`, equal for rows equal up to sign (first nonzero made positive)."""
    matrix = matrix + 0.0  # -0.0 becomes 0.0
    rows, length = matrix.shape
    if length > _HASH_LENGTH:
        raise ValueError(f"vectors longer than {_HASH_LENGTH} are not hashed")
    nonzero = matrix != 0
    first = nonzero.to(torch.int8).argmax(-1)
    sign = torch.sign(matrix.gather(-1, first.unsqueeze(-1)))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    canonical = (matrix * sign).contiguous()
    bits = canonical.view(_INT_VIEW[canonical.dtype]).long()
    keys = []
    for part in torch.split(bits, max(1, (1 << 22) // max(length, 1))):
        h1 = (part * weights[0][:length]).sum(-1).tolist()
        h2 = (part * weights[1][:length]).sum(-1).tolist()
        keys.extend(zip([length] * len(h1), h1, h2, strict=True))
    return keys


def _as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dim() == 0:
        return tensor.reshape(1, 1)
    if tensor.dim() == 1:
        return tensor.unsqueeze(0)
    return tensor.reshape(-1, tensor.shape[-1]) if tensor.dim() > 2 else tensor


class ReleaseIndex:
    """Where every row and column of every released floating tensor sits, by key."""

    def __init__(self, release: ReleaseFiles, progress: Progress = None) -> None:
        self.weights = _hash_weights()
        self.dtype: torch.dtype | None = None
        self.where: dict[tuple[int, int, int], tuple[str, str, int]] = {}
        for key in sorted(release.key_to_file):
            tensor = release.tensor(key)
            if not tensor.is_floating_point():
                continue
            self.dtype = self.dtype or tensor.dtype
            matrix = _as_matrix(tensor)
            for axis, vectors in (("row", matrix), ("column", matrix.T)):
                if axis == "column" and tensor.dim() < 2:
                    continue
                for position, vector_key in enumerate(vector_keys(vectors, self.weights)):
                    self.where.setdefault(vector_key, (key, axis, position))

    def lookup(self, vectors: torch.Tensor) -> list[tuple[str, str, int] | None]:
        """For each row of `vectors` (cast to the release dtype), where it appears in the release."""
        vectors = vectors.to(self.dtype or vectors.dtype)
        zero = (vectors == 0).all(-1).tolist()
        keys = vector_keys(vectors, self.weights)
        return [None if is_zero else self.where.get(k) for k, is_zero in zip(keys, zero, strict=True)]


def protected_param_fraction(index: ReleaseIndex, checkpoint) -> tuple[float, int, int]:
    """(fraction, protected, total) over every floating tensor of the source checkpoint."""
    total = unprotected = 0
    for key in sorted(checkpoint.key_to_file):
        tensor = checkpoint.tensor(key)
        if not tensor.is_floating_point():
            continue
        matrix = _as_matrix(tensor)
        rows, columns = matrix.shape
        total += rows * columns
        row_hit = sum(found is not None for found in index.lookup(matrix))
        col_hit = sum(found is not None for found in index.lookup(matrix.T)) if tensor.dim() >= 2 else 0
        unprotected += row_hit * columns + col_hit * rows - row_hit * col_hit
    return (1.0 - unprotected / total if total else 0.0), total - unprotected, total


def declared_protected(spec: dict) -> dict[str, bool]:
    """Which parts of an expanded channel the release declares hidden (from its recorded hardening).

    The down column always is. A paper release (`--fit taylor --no-hardening`) publishes gate rows up to
    sign and up rows as they are, and says so; any other release normalises gate rows, and a release with
    secret scales also scales up rows.
    """
    hardening = spec.get("hardening", {})
    paper_gate = spec.get("fit") == "taylor" and not hardening.get("normalised_centres", True)
    return {"gate": not paper_gate, "up": bool(hardening.get("scales")) and bool(spec.get("gated")),
            "down": True}


def scan_unit(index: ReleaseIndex, unit: str, source, protected: torch.Tensor, declared: dict[str, bool],
              found: dict[str, list[str]]) -> None:
    """Record every declared-protected source vector of one unit that appears in the release."""
    parts = [("gate", source.gate, f"{unit}.gate rows", False),
             ("down", source.down, f"{unit}.down columns", True)]
    if source.up is not None:
        parts.append(("up", source.up, f"{unit}.up rows", False))
    for part, tensor, label, columns in parts:
        if not declared[part] or protected.numel() == 0:
            continue
        vectors = tensor.T[protected] if columns else tensor[protected]
        for channel, place in zip(protected.tolist(), index.lookup(vectors), strict=True):
            if place is not None:
                released, axis, position = place
                found.setdefault(released, []).append(f"{label} [{channel}] = released {axis} {position}")


# -- models: rebuilt from recovered weights, compared on held-out text -------------------------------


class PlainMLP(torch.nn.Module):
    """A recovered MLP as a module, swapped into the release model in place of a `TaylorMLP`."""

    def __init__(self, recovered: RecoveredMLP, activation) -> None:
        super().__init__()
        self.recovered, self.activation = recovered, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.recovered(x.float(), self.activation).to(x.dtype)


def _set_module(model: torch.nn.Module, path: str, module: torch.nn.Module) -> torch.nn.Module:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = parent[int(name)] if name.isdigit() else getattr(parent, name)
    if name.isdigit():
        parent[int(name)] = module
    else:
        setattr(parent, name, module)
    return old


@torch.no_grad()
def top1_agreement(reference_logits: torch.Tensor, model, ids: torch.Tensor) -> float:
    logits = torch.cat([model(input_ids=row.unsqueeze(0)).logits[0, :-1] for row in ids])
    return float((logits.argmax(-1) == reference_logits.argmax(-1)).double().mean())


@torch.no_grad()
def reference_logits(model, ids: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(input_ids=row.unsqueeze(0)).logits[0, :-1] for row in ids])


def heldout_ids(release: ReleaseFiles, tokens: int = HELDOUT_TOKENS) -> tuple[torch.Tensor, str]:
    """Held-out text for comparing models: the built-in eval prompts, or seeded random ids."""
    from packager.stages.text import builtin_prompts

    tokenizer = _tokenizer(release)
    if tokenizer is None:
        generator = torch.Generator().manual_seed(ATTACKER_SEED + 1)
        vocab = int(release.config["vocab_size"])
        length = min(128, tokens)
        return torch.randint(0, vocab, (max(1, tokens // length), length), generator=generator), "random ids"
    stream: list[int] = []
    for prompt in builtin_prompts("eval"):
        stream.extend(tokenizer(prompt)["input_ids"])
    stream = stream[:tokens]
    length = min(128, len(stream))
    count = len(stream) // length
    return torch.tensor(stream[: count * length]).view(count, length), "built-in eval prompts"


def _tokenizer(release: ReleaseFiles):
    names = ("tokenizer.json", "tokenizer.model", "vocab.json")
    if not any((release.path / name).is_file() for name in names):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(release.path, trust_remote_code=False)


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
    stream: list[int] = []
    for prompt in builtin_prompts("calibration") + builtin_prompts("greedy"):
        stream.extend(tokenizer(prompt)["input_ids"])
    stream = stream[:tokens]
    length = min(128, len(stream))
    count = len(stream) // length
    return torch.tensor(stream[: count * length]).view(count, length), "built-in calibration and greedy prompts"


@torch.no_grad()
def capture_io(model, units: list[str], ids: torch.Tensor, *, inputs: Iterable[int], outputs: Iterable[int] = ()
               ) -> dict[int, tuple[torch.Tensor, torch.Tensor | None]]:
    """Inputs of the release's MLP units `inputs` (and outputs of `outputs`) on `ids`, float32 [T, H]."""
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


# -- the audit ---------------------------------------------------------------------------------------


def _check_secret(release: ReleaseFiles, secret_file: str | Path | None) -> str | None:
    from packager.maths.transform import secret_id

    if secret_file is not None:
        path = Path(secret_file)
        if not path.is_file():
            raise UsageError(f"secret file '{path}' not found")
        value, origin = path.read_text().strip().encode(), f"--secret-file '{path}'"
    elif os.environ.get("UNSWIFT_SECRET"):
        value, origin = os.environ["UNSWIFT_SECRET"].strip().encode(), "UNSWIFT_SECRET"
    else:
        return None
    recorded = release.spec.get("hardening", {}).get("secret_id")
    if recorded and secret_id(value) != recorded:
        raise UsageError(f"the secret from {origin} is not this release's (secret_id {recorded})",
                         hint="pass the DIR.secret file written when the release was converted")
    return "matches the release's secret_id"


def audit(
    release_dir: str | Path, *, reference=None, secret_file: str | Path | None = None,
    max_recovered: float | None = None, attacks: Iterable[str] = ATTACK_NAMES,
    learning: LearningBudget | None = None, kerckhoffs_data: bool = False, progress: Progress = None,
) -> AuditReport:
    """Run the known attacks and the leak scan on a release.

    Args:
        release_dir: the release folder.
        reference: the source checkpoint (path, Hub id or `Checkpoint`); without it recovered fractions,
            the leak scan and `protected_param_fraction` are null, and rebuilt models are compared with
            the release.
        secret_file: the release secret (else `UNSWIFT_SECRET`); only checked against `secret_id`, never
            given to an attack.
        max_recovered: raise `CheckFailed` if an attack recovers a larger fraction (needs `reference`).
        attacks: which attacks to run, of `coefficient_ratio`, `kerckhoffs`, `learning`.
        learning: the learning attack's budget (its `tokens` also size the attacker's text).
        kerckhoffs_data: give the `kerckhoffs` attacker MLP inputs recorded on its own text (it then
            refits with their histogram); by default it uses no data at all.

    Returns:
        The report (also attached to `CheckFailed.details` when the threshold is missed).

    Raises:
        UsageError: not a release, unknown attack, secret mismatch, or `max_recovered` without reference.
        CheckFailed: an attack recovered more than `max_recovered`.
    """
    from packager.formats.checkpoint import Checkpoint, open_checkpoint
    from packager.stages.evaluate import load_release
    from packager.stages.tensors import source_mlp

    say = progress or (lambda _msg: None)
    attacks = list(attacks)
    unknown = [name for name in attacks if name not in ATTACK_NAMES]
    if unknown:
        raise UsageError(f"unknown attack {unknown[0]!r}; choose from {', '.join(ATTACK_NAMES)}")
    if max_recovered is not None and reference is None:
        raise UsageError("--max-recovered needs --reference: recovered fractions are measured against the "
                         "source checkpoint")
    if max_recovered is not None and not 0.0 <= max_recovered <= 1.0:
        raise UsageError(f"--max-recovered {max_recovered} is outside [0, 1]")
    budget = learning or LearningBudget()
    release = ReleaseFiles(Path(release_dir))
    notes: list[str] = []
    secret_note = _check_secret(release, secret_file)
    if secret_note:
        notes.append(f"secret: {secret_note} (not used by any attack)")
    checkpoint = None
    if reference is not None:
        checkpoint = reference if isinstance(reference, Checkpoint) else open_checkpoint(reference)
    torch.manual_seed(budget.seed)

    say("loading the release through its own loader")
    model = load_release(release.path, dtype=torch.float32)
    ids, text_source = heldout_ids(release)
    bench = _Bench(model=model, ids=ids, units=release.units,
                   activation=get_activation(release.spec["hidden_act"]), budget=budget)
    if checkpoint is not None:
        source_model = checkpoint.load_model(torch.float32)
        bench.target = reference_logits(source_model, ids)
        del source_model
        bench.compared_with = "source"
        release_top1 = top1_agreement(bench.target, model, ids)
        bench.sources = [source_mlp(checkpoint, i) for i in range(len(bench.units))]
        bench.protected = [expanded_source_channels(release.released_mlp(i), bench.sources[i].gate)
                           for i in range(len(bench.units))]
    else:
        bench.target = reference_logits(model, ids)
        release_top1 = None
        notes.append("no --reference: recovered fractions, protected_param_fraction and the leak scan need "
                     "the source checkpoint and are null; rebuilt models are compared with the release")
    if "kerckhoffs" in attacks and release.spec.get("out_bias"):
        notes.append("kerckhoffs assumes the source's gate projection has no bias (it reads the centre from "
                     "the released bias); this family's MLPs have biases, so its figures understate what a "
                     "knowledgeable attacker recovers")
    bench.learning_units = list(budget.layers) if budget.layers is not None else [len(bench.units) // 2]
    if "learning" in attacks or (kerckhoffs_data and "kerckhoffs" in attacks):
        say(f"attacker data: running the release on up to {budget.tokens} tokens of the attacker's text")
        start = time.perf_counter()
        data, source_name = attacker_ids(release, model, budget.tokens)
        inputs_of = range(len(bench.units)) if kerckhoffs_data else bench.learning_units
        bench.io = capture_io(model, bench.units, data, inputs=inputs_of, outputs=bench.learning_units)
        bench.data = {"tokens": int(data.numel()), "source": source_name,
                      "seconds": round(time.perf_counter() - start, 3)}
    results = []
    for name in attacks:
        say(f"attack {name}")
        result = _run_attack(name, release, bench, kerckhoffs_data=kerckhoffs_data)
        results.append(result)
        say(f"  {name}: recovered {_fmt(result.recovered_fraction)}, relative error "
            f"{_fmt(result.relative_error)}, {result.seconds:.1f} s, rebuilt top-1 {result.rebuilt_top1:.4f} "
            f"vs the {bench.compared_with}")
    fraction = leaks = None
    if checkpoint is not None:
        say("leak scan: hashing every released row and column")
        fraction, leaks = _leak_scan(release, checkpoint, bench)
    report = AuditReport(protected_param_fraction=fraction, attacks=results, leaks=leaks,
                         reference=(checkpoint.name if checkpoint is not None else None),
                         heldout_tokens=int(ids.numel()), release_top1=release_top1,
                         notes=notes + [f"held-out text: {text_source}"])
    worst = report.max_recovered()
    if max_recovered is not None and worst is not None and worst > max_recovered:
        scored = [a for a in results if a.recovered_fraction is not None]
        offender = max(scored, key=lambda a: a.recovered_fraction)
        raise CheckFailed(
            f"attack '{offender.name}' recovered {worst:.4f} of the protected weights > --max-recovered "
            f"{max_recovered}", details=report.to_json())
    return report


@dataclass
class _Bench:
    """What every attack of one audit shares: the release model, texts, source weights, attacker data."""

    model: torch.nn.Module
    ids: torch.Tensor
    units: list[str]
    activation: object
    budget: LearningBudget
    target: torch.Tensor | None = None
    compared_with: str = "release"
    sources: list | None = None
    protected: list[torch.Tensor] | None = None
    learning_units: list[int] = field(default_factory=list)
    io: dict = field(default_factory=dict)
    data: dict | None = None


def _run_attack(name: str, release: ReleaseFiles, bench: _Bench, *, kerckhoffs_data: bool) -> AttackResult:
    """Run one attack on every unit it targets, score it and measure its rebuilt model."""
    from packager.stages.audit.attacks import coefficient_ratio, kerckhoffs
    from packager.stages.audit.attacks import learning as learning_attack

    attacked = bench.learning_units if name == "learning" else list(range(len(bench.units)))
    recovered: dict[int, RecoveredMLP] = {}
    start = time.perf_counter()
    for i in attacked:
        released = release.released_mlp(i)
        if name == "coefficient_ratio":
            recovered[i] = by_group(coefficient_ratio.recover, released)
        elif name == "kerckhoffs":
            inputs = bench.io[i][0] if kerckhoffs_data else None
            recovered[i] = by_group(lambda view, x=inputs: kerckhoffs.recover(view, inputs=x), released)
        else:
            x, y = bench.io[i]
            recovered[i] = learning_attack.recover(released, x, y, steps=bench.budget.steps, lr=bench.budget.lr,
                                                   seed=bench.budget.seed)
    seconds = time.perf_counter() - start
    tally = _Tally()
    if bench.sources is not None:
        for i, out in recovered.items():
            score_unit(tally, out, bench.sources[i], bench.protected[i])
    originals = {i: _set_module(bench.model, bench.units[i], PlainMLP(out, bench.activation))
                 for i, out in recovered.items()}
    try:
        rebuilt = top1_agreement(bench.target, bench.model, bench.ids)
    finally:
        for i, module in originals.items():
            _set_module(bench.model, bench.units[i], module)
    extra = merge_extras([out.extra for out in recovered.values() if out.extra])
    if name == "learning" or (name == "kerckhoffs" and kerckhoffs_data):
        extra["attacker_data"] = bench.data
    if name == "learning":
        budget = bench.budget
        extra["budget"] = {"steps": budget.steps, "tokens": (bench.data or {}).get("tokens", 0),
                           "tokens_requested": budget.tokens, "units": attacked, "lr": budget.lr}
    return AttackResult(
        name=name, recovered_fraction=tally.fraction, relative_error=tally.relative_error,
        seconds=round(seconds, 3), rebuilt_top1=rebuilt, rebuilt_compared_with=bench.compared_with,
        recovered_fraction_up_to_scale=tally.fraction_up_to_scale, units_attacked=len(attacked), extra=extra,
    )


def _leak_scan(release: ReleaseFiles, checkpoint, bench: _Bench) -> tuple[float, list[dict]]:
    """(protected_param_fraction, leaks) from one hash index of the release."""
    index = ReleaseIndex(release)
    fraction, _, _ = protected_param_fraction(index, checkpoint)
    declared = declared_protected(release.spec)
    found: dict[str, list[str]] = {}
    for i, unit in enumerate(bench.units):
        scan_unit(index, unit, bench.sources[i], bench.protected[i], declared, found)
    leaks = [{"tensor": tensor, "count": len(matches), "matches": matches[:LEAK_EXAMPLES]}
             for tensor, matches in sorted(found.items())]
    return fraction, leaks


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
