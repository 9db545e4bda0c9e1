"""Fingerprinted releases: one recipient's pattern added to the source as convert reads it.

`prepare` turns (source, recipient, ledger, publisher secret) into a `Fingerprint`: the recipient's
pattern key, the profile shared by every recipient of this source (made once from calibration text and
kept beside the ledger), the recipient's own hardening secret, and a view of the source
(`FingerprintedCheckpoint`) whose every tensor read returns the fingerprinted tensor. Convert reads the
source through that view only, so the pattern is added tensor by tensor before the TaylorMLP
transform, and the series is fitted to the fingerprinted MLPs; nothing else in convert changes.

The profile's statistics (`sensitivity`): per fingerprinted linear layer, the mean over tokens of its
input squared (per column) and of the gradient at its output squared (per row), with labels sampled
from the model's own distribution (the true Fisher's Kronecker factors, see
`packager.maths.fingerprint.profile`). One forward and backward pass per batch of calibration text;
no weight gradient is ever formed.

The fidelity cost (`source_fidelity`) is measured on held-out text, the fingerprinted source against
the source, both in float32, and recorded in the release's `unswift.json` (`fingerprint`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from packager.errors import UsageError
from packager.formats.checkpoint import Checkpoint
from packager.formats.files import sha256_text
from packager.formats.ledger import (
    append_entry,
    default_secret_path,
    issued,
    load_profile,
    read_ledger,
    save_profile,
)
from packager.formats.secret import Secret, read_secret
from packager.maths.fingerprint.alignment import check_supported
from packager.maths.fingerprint.embed import fingerprint_tensor
from packager.maths.fingerprint.keys import SCHEME, hardening_secret, pattern_digest, recipient_key
from packager.maths.fingerprint.profile import (
    CEILING,
    KL_BUDGET,
    Profile,
    ceilings,
    from_tensors,
    kfac_profile,
    predicted_kl,
    profile_digest,
    profile_tensors,
)
from packager.maths.fingerprint.roles import Dims, parts
from packager.maths.transform import secret_id
from packager.progress import Progress, reporter

#: Sequences per forward-backward pass of the sensitivity statistics.
BATCH = 2


@dataclass(frozen=True)
class FingerprintedCheckpoint(Checkpoint):
    """The source as one recipient's copy: every tensor read carries the recipient's pattern (float32)."""

    key: bytes = field(default=b"", repr=False)
    profile: Profile = field(default_factory=dict, repr=False)
    dims: Dims | None = None

    def tensor(self, key: str) -> torch.Tensor:
        return fingerprint_tensor(key, super().tensor(key), self.key, self.profile, self.dims)

    def tensor_slice(self, key: str, index: int) -> torch.Tensor:
        if not parts(key, tuple(self.tensor_specs()[key].shape), self.dims):
            return super().tensor_slice(key, index)
        return self.tensor(key)[index]

    def load_model(self, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        model = super().load_model(torch.float32, "cpu")
        add_pattern(model, self.key, self.profile, self.dims)
        return model.to(dtype=dtype, device=device)


def add_pattern(model: torch.nn.Module, key: bytes, profile: Profile, dims: Dims) -> None:
    """Add the recipient's pattern to a loaded float32 model's parameters, in place."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parts(name, tuple(parameter.shape), dims):
                parameter.copy_(fingerprint_tensor(name, parameter.detach(), key, profile, dims))


def with_pattern(checkpoint: Checkpoint, key: bytes, profile: Profile) -> FingerprintedCheckpoint:
    fields = {f.name: getattr(checkpoint, f.name) for f in dataclasses.fields(Checkpoint)}
    return FingerprintedCheckpoint(**fields, key=key, profile=profile, dims=Dims.from_config(checkpoint.config))


# -- the profile ---------------------------------------------------------------------------------------


def _linear_roles(model: torch.nn.Module, dims: Dims) -> dict[str, tuple[torch.nn.Linear, str]]:
    found = {}
    for path, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            roles = parts(path + ".weight", tuple(module.weight.shape), dims)
            if len(roles) == 1:
                found[path] = (module, roles[0].role.key)
    return found


def sensitivity(model: torch.nn.Module, ids: torch.Tensor, *, seed: int = 0, progress: Progress = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(E[x²] per input column, E[δ²] per output row) of every fingerprinted linear layer, float64.

    Labels are drawn from the model's own predictive distribution with a generator seeded by `seed`.
    """
    say = reporter(progress)
    dims = Dims.from_config(model.config)
    linears = _linear_roles(model, dims)
    sums = {path: [torch.zeros(m.in_features, dtype=torch.float64), torch.zeros(m.out_features, dtype=torch.float64)]
            for path, (m, _) in linears.items()}
    generator = torch.Generator().manual_seed(seed)
    handles = []

    def forward_hook(module, args, output, path):
        x = args[0].detach().double().reshape(-1, module.in_features)
        sums[path][0] += (x * x).sum(0)
        if output.requires_grad:
            output.register_hook(lambda grad: _backward(grad, path))

    def _backward(grad, path):
        d = grad.detach().double().reshape(-1, grad.shape[-1])
        sums[path][1] += (d * d).sum(0)

    def start_graph(module, args, output):  # gradients flow from here without any weight gradient
        return output.detach().requires_grad_(True)

    for path, (module, _) in linears.items():
        handles.append(module.register_forward_hook(lambda m, a, o, path=path: forward_hook(m, a, o, path)))
    handles.append(model.get_input_embeddings().register_forward_hook(start_graph))
    was = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in was:
        p.requires_grad_(False)
    tokens = 0
    try:
        for start in range(0, ids.shape[0], BATCH):
            batch = ids[start:start + BATCH]
            logp = model(input_ids=batch).logits.float().log_softmax(-1)
            flat = logp.detach().exp().reshape(-1, logp.shape[-1])
            labels = torch.multinomial(flat, 1, generator=generator).reshape(batch.shape)
            logp.gather(-1, labels.unsqueeze(-1)).sum().backward()
            tokens += batch.numel()
            say(f"fingerprint sensitivity: {min(start + BATCH, ids.shape[0])}/{ids.shape[0]} sequences")
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in was:
            p.requires_grad_(flag)
    return ({linears[p][1]: s[0] / tokens for p, s in sums.items()},
            {linears[p][1]: s[1] / tokens for p, s in sums.items()})


def role_weights(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """Every fingerprinted matrix of the source by role (read one tensor at a time)."""
    dims = Dims.from_config(checkpoint.config)
    out = {}
    for name, spec in checkpoint.tensor_specs().items():
        found = parts(name, tuple(spec.shape), dims)
        if found:
            tensor = checkpoint.tensor(name)
            out.update({p.role.key: p.read(tensor).float().clone() for p in found})
    return out


def make_profile(checkpoint: Checkpoint, model: torch.nn.Module, ids: torch.Tensor, *, seed: int = 0,
                 kl_budget: float = KL_BUDGET, ceiling: float = CEILING, progress: Progress = None
                 ) -> tuple[Profile, dict]:
    """The kfac profile of the source, capped at `ceiling` × row RMS, spending `kl_budget` (predicted)."""
    x, d = sensitivity(model, ids, seed=seed, progress=progress)
    weights = role_weights(checkpoint)
    profile = kfac_profile(x, d, kl_budget=kl_budget, ceiling=ceilings(weights, ceiling))
    summary = {"kl_budget": kl_budget, "ceiling": ceiling,
               "predicted_kl": predicted_kl(profile, {r: (d[r], x[r]) for r in profile}),
               "sensitivity_tokens": int(ids.numel()), "roles": len(profile)}
    return profile, summary


# -- fidelity ------------------------------------------------------------------------------------------


@torch.no_grad()
def source_fidelity(source_model: torch.nn.Module, key: bytes, profile: Profile, ids: torch.Tensor) -> dict:
    """Top-1 agreement and mean KL of the fingerprinted source against the source (float32, teacher-forced)."""
    from packager.stages.evaluate import compare_logits

    copy = _clone(source_model)
    add_pattern(copy, key, profile, Dims.from_config(source_model.config))
    agreement = compare_logits(source_model, copy, ids, batch_size=1)
    return {"top1": agreement.top1_agreement, "kl": agreement.kl_mean, "tokens": agreement.tokens}


def _clone(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model)


# -- putting it together ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fingerprint:
    """What convert needs to make one recipient's copy, and what the ledger records of it."""

    recipient: str
    ledger: Path
    checkpoint: FingerprintedCheckpoint
    hardening: Secret
    publisher_secret_id: str
    profile_name: str
    profile_digest: str
    source_digest: str
    publisher: Secret = field(repr=False, default=None)

    def record(self, fidelity: dict, summary: dict) -> dict:
        """`unswift.json["fingerprint"]`: that the release carries one, never whose."""
        return {"scheme": SCHEME, **summary, "source_fidelity": fidelity}


def publisher_secret(secret_file: str | Path | None, ledger: Path, *, create: bool) -> Secret:
    """The publisher's one secret: `--secret-file`, else UNSWIFT_SECRET, else `<ledger stem>.secret` beside the
    ledger (created, mode 0600, when `create`).

    Raises:
        UsageError: a given file is missing or empty; no secret exists and `create` is false.
    """
    from packager.formats.atomic import write_text_atomic

    given = read_secret(secret_file)
    if given is not None:
        return given
    path = default_secret_path(ledger)
    if path.is_file() and path.read_text().strip():
        return Secret(path.read_text().strip().encode(), "file", path)
    if not create:
        raise UsageError(f"no publisher secret: pass --secret-file, set UNSWIFT_SECRET, or keep '{path}' beside "
                         "the ledger")
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, secrets.token_hex(32) + "\n", mode=0o600)
    return Secret(path.read_text().strip().encode(), "new", path)


def check_source(checkpoint: Checkpoint, release_dtype: str | None) -> None:
    """Refuse what a fingerprint cannot be made or traced for, before any work.

    Raises:
        UsageError: a family alignment does not cover, or a half-precision source (the pattern is far
            below its rounding step).
    """
    try:
        check_supported(checkpoint.config)
    except ValueError as err:
        raise UsageError(f"cannot fingerprint this checkpoint: {err}",
                         hint="fingerprint a supported family, or release without --recipient") from err
    dtypes = {spec.dtype for name, spec in checkpoint.tensor_specs().items()
              if parts(name, tuple(spec.shape), Dims.from_config(checkpoint.config))}
    if dtypes - {"F32", "F64"}:
        raise UsageError(f"cannot fingerprint a {'/'.join(sorted(dtypes))} source: the pattern (~1e-3 of a weight) "
                         "is below a half-precision rounding step and would be rounded away",
                         hint="save a float32 copy of the checkpoint and release that")


def check_recipient(name: str) -> str:
    name = name.strip()
    if not name or any(c in name for c in "\n\r\t") or len(name) > 200:
        raise UsageError(f"recipient name {name!r} is invalid: one line, 1 to 200 characters")
    return name


def source_digest(checkpoint: Checkpoint) -> str:
    return sha256_text(json.dumps(checkpoint.file_digests(), sort_keys=True))


def prepare(checkpoint: Checkpoint, *, recipient: str, ledger: Path, secret_file: str | Path | None,
            text_ids=None, seed: int = 0, progress: Progress = None, model=None) -> tuple[Fingerprint, dict]:
    """The recipient's fingerprint, and the profile summary (made now or reused from the ledger's folder).

    `text_ids` is a callable returning calibration token ids [sequences, length]; it is called only when
    no profile of this source exists beside the ledger. `model` is the loaded float32 source, if any.
    """
    say = reporter(progress)
    recipient = check_recipient(recipient)
    publisher = publisher_secret(secret_file, ledger, create=True)
    if publisher.origin == "new":
        say(f"new publisher secret written to {publisher.path} (mode 0600); keep it with the ledger, never publish it")
    digest = source_digest(checkpoint)
    publisher_id = secret_id(publisher.value)
    entries = issued(read_ledger(ledger), source_digest=digest) if ledger.is_file() else []
    if any(e["recipient"] == recipient and e["publisher_secret_id"] == publisher_id for e in entries):
        say(f"the ledger already lists '{recipient}' for this source: this copy is the same fingerprint again")
    known = [e for e in entries if e.get("profile")]
    if known:
        name, summary = known[-1]["profile"], (known[-1].get("fidelity") or {}).get("profile", {})
        profile = from_tensors(load_profile(ledger, name))
        if profile_digest(profile) != known[-1]["profile_digest"]:
            raise UsageError(f"fingerprint profile '{name}' does not match the ledger's digest")
        say(f"fingerprint profile {name} reused from the ledger's folder")
    else:
        say("fingerprint profile: sensitivity statistics over the calibration text")
        if model is None:
            model = checkpoint.load_model(torch.float32)
        profile, summary = make_profile(checkpoint, model, text_ids(), seed=seed, progress=progress)
        name = save_profile(ledger, profile_tensors(profile), profile_digest(profile),
                            {"source_digest": digest, "summary": json.dumps(summary)})
    key = recipient_key(publisher.value, recipient)
    hardening = Secret(hardening_secret(publisher.value, recipient), "derived", None)
    return Fingerprint(recipient, ledger, with_pattern(checkpoint, key, profile), hardening, publisher_id, name,
                       profile_digest(profile), digest, publisher), summary


def record_issue(fp: Fingerprint, release_dir: Path, fingerprint_record: dict) -> dict:
    """Append the "issued" entry for a release just written; returns it."""
    from packager.formats.record import read_record

    record = read_record(release_dir)
    entry = {
        "event": "issued", "date": _now(), "recipient": fp.recipient, "repo": None, "revision": None,
        "release_digest": release_digest(record), "secret_id": record["transform"]["hardening"]["secret_id"],
        "publisher_secret_id": fp.publisher_secret_id, "source": record["source"]["name"],
        "source_digest": fp.source_digest, "scheme": SCHEME, "profile": fp.profile_name,
        "profile_digest": fp.profile_digest, "pattern_digest": pattern_digest(), "torch": torch.__version__,
        "fidelity": {"profile": {k: v for k, v in fingerprint_record.items() if k not in ("scheme", "source_fidelity")},
                     "source": fingerprint_record.get("source_fidelity")},
    }
    append_entry(fp.ledger, entry)
    return entry


def record_push(ledger: Path, recipient: str, release_dir: Path, *, repo: str, revision: str | None,
                tag: str | None) -> None:
    """Append the "pushed" entry: where a recipient's release went."""
    from packager.formats.record import read_record

    append_entry(ledger, {"event": "pushed", "date": _now(), "recipient": recipient, "repo": repo,
                          "revision": revision, "tag": tag, "release_digest": release_digest(read_record(release_dir))})


def release_digest(record: dict) -> str:
    """SHA-256 of the release's payload digests (every file but card, record and signature)."""
    return sha256_text(json.dumps(record.get("payload") or {}, sort_keys=True))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- text ------------------------------------------------------------------------------------------------


def calibration_ids(checkpoint: Checkpoint, model, text: str | Path | None, tokens: int, seed: int, *,
                    seq_len: int | None = None) -> torch.Tensor:
    """The calibration text's token ids, as calibration reads or samples them (the same cache entry)."""
    from packager.stages.calibrate import DEFAULT_SEQ_LEN
    from packager.stages.text import load_text, sample_text

    tokenizer = checkpoint.load_tokenizer()
    if text is not None:
        return load_text(text, tokenizer, tokens=tokens, seq_len=DEFAULT_SEQ_LEN).ids
    return sample_text(model, tokenizer, kind="calibration", tokens=tokens, seq_len=seq_len or DEFAULT_SEQ_LEN,
                       seed=seed, cache_key=f"{source_digest(checkpoint)}/float32").ids


def eval_ids(checkpoint: Checkpoint, model, tokens: int, seed: int = 0, *, seq_len: int | None = None
             ) -> torch.Tensor:
    """Held-out text as `unswift eval` samples it by default (its cache entry, float32)."""
    from packager.stages.evaluate import DEFAULT_SEQ_LEN, EVAL_SEED_OFFSET
    from packager.stages.text import sample_text

    return sample_text(model, checkpoint.load_tokenizer(), kind="eval", tokens=tokens,
                       seq_len=seq_len or DEFAULT_SEQ_LEN,
                       seed=seed + EVAL_SEED_OFFSET,
                       cache_key=f"{json.dumps(checkpoint.file_digests(), sort_keys=True)}/float32").ids
