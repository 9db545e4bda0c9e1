"""`unswift trace`: which recipient's copy a suspect model derives from.

Orchestration only: the suspect is opened as tensors (`packager.formats.suspect`: a release folder, a
plain safetensors folder or a GGUF file; hostile files refused before any tensor is read), a release's
TaylorMLPs are rebuilt into plain MLPs with the audit's `kerckhoffs` attack (no secret needed: the
per-channel scales, signs and order it leaves are gauges alignment undoes), the ledger and the profile
are read, and `packager.maths.fingerprint.trace` aligns the suspect to the reference layer by layer and
scores every recipient the ledger lists for this reference and this publisher secret.

Memory: the reference's and the suspect's embeddings and LM heads, plus one decoder layer of each at a
time (a release's layer is rebuilt when it is first read, and only the last one is kept).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from packager.errors import UsageError
from packager.formats.checkpoint import Checkpoint
from packager.formats.ledger import issued, load_profile, read_ledger
from packager.formats.suspect import GGUFTensors, SafetensorsTensors, safetensors_files, suspect_kind
from packager.maths.fingerprint.alignment import Geometry, check_supported
from packager.maths.fingerprint.keys import pattern_digest, recipient_key
from packager.maths.fingerprint.profile import from_tensors, profile_digest
from packager.maths.fingerprint.score import THRESHOLD
from packager.maths.fingerprint.trace import trace_keys
from packager.maths.transform import secret_id
from packager.progress import Progress, reporter


@dataclass
class TraceReport:
    """What `unswift trace --json` prints (docs/INTERFACE.md, trace)."""

    suspect: str
    suspect_format: str
    reference: str
    fields: dict
    release_secret_id_matches: str | None = None
    seconds: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def identified(self) -> str | None:
        return self.fields.get("identified")

    def to_json(self) -> dict:
        return {"suspect": self.suspect, "suspect_format": self.suspect_format, "reference": self.reference,
                **self.fields, "threshold": THRESHOLD, "correction": "sidak",
                "release_secret_id_matches": self.release_secret_id_matches, "seconds": self.seconds,
                "notes": self.notes}


class CheckpointTensors(Mapping):
    """A reference checkpoint as a lazy mapping (one tensor read per lookup)."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint

    def __getitem__(self, name: str) -> torch.Tensor:
        if not self.checkpoint.has(name):
            raise KeyError(name)
        return self.checkpoint.tensor(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.checkpoint.has(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.checkpoint.key_to_file)

    def __len__(self) -> int:
        return len(self.checkpoint.key_to_file)


class RebuiltRelease(Mapping):
    """A TaylorMLP release as plain Llama-layout tensors: MLPs rebuilt by the `kerckhoffs` attack.

    Non-MLP tensors are read as released; `model.layers.N.mlp.{gate,up,down}_proj.weight` are rebuilt
    when first asked for (one layer kept at a time).
    """

    def __init__(self, folder: Path, config: dict) -> None:
        self.path, self.config = folder, config
        self.spec = config["unswift"]
        self.tensors = SafetensorsTensors(safetensors_files(folder))
        try:
            layers = self.spec["layers"]
            self.units = [entry.get("unit", f"model.layers.{i}.mlp") for i, entry in enumerate(layers)]
            for key in ("order", "basis", "extrapolation", "fit", "hidden_act", "gated"):
                self.spec[key]  # noqa: B018 - presence check
        except (KeyError, TypeError) as err:
            raise UsageError(f"release '{folder}': its config.json unswift section lacks {err} (needed to rebuild "
                             "its MLPs)") from err
        self.layer_of = {unit: i for i, unit in enumerate(self.units)}
        self._cache: tuple[int, dict[str, torch.Tensor]] | None = None

    # what `released_mlp` reads
    def tensor(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def has(self, key: str) -> bool:
        return key in self.tensors

    def _rebuilt(self, index: int) -> dict[str, torch.Tensor]:
        from packager.stages.audit.attacks import by_group, kerckhoffs
        from packager.stages.audit.audit import released_mlp

        if self._cache is None or self._cache[0] != index:
            recovered = by_group(lambda view: kerckhoffs.recover(view), released_mlp(self, index))
            rebuilt = {"gate_proj": recovered.gate.float(), "down_proj": recovered.down.float()}
            if recovered.up is not None:
                rebuilt["up_proj"] = recovered.up.float()
            self._cache = (index, rebuilt)
        return self._cache[1]

    def _mlp_key(self, name: str) -> tuple[int, str] | None:
        for part in ("gate_proj", "up_proj", "down_proj"):
            suffix = f".{part}.weight"
            if name.endswith(suffix) and name[: -len(suffix)] in self.layer_of:
                return self.layer_of[name[: -len(suffix)]], part
        return None

    def __getitem__(self, name: str) -> torch.Tensor:
        found = self._mlp_key(name)
        if found is not None:
            return self._rebuilt(found[0])[found[1]]
        return self.tensors[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (self._mlp_key(name) is not None or name in self.tensors)

    def __iter__(self) -> Iterator[str]:
        names = [n for n in self.tensors if not n.startswith(tuple(u + "." for u in self.units))]
        return iter(names + [f"{u}.{p}.weight" for u in self.units for p in ("gate_proj", "up_proj", "down_proj")])

    def __len__(self) -> int:
        return sum(1 for _ in self)


def open_suspect(path: Path, reference: Checkpoint) -> tuple[str, Mapping, dict | None]:
    """(format, tensors under Llama names, the release's config or None)."""
    import json

    kind = suspect_kind(path)
    if kind == "gguf":
        config = reference.config
        heads = int(config.num_attention_heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        return kind, GGUFTensors(path, heads=heads, kv_heads=kv_heads), None
    if kind == "release":
        config = json.loads((path / "config.json").read_text())
        return kind, RebuiltRelease(path, config), config
    return kind, SafetensorsTensors(safetensors_files(path)), None


def _check_shapes(suspect: Mapping, geometry: Geometry, reference: Mapping) -> None:
    """The suspect has the reference's decoder shapes (else it cannot be a copy of it: bad input)."""
    wanted = [f"model.layers.{i}.self_attn.{p}.weight" for i in range(geometry.layers) for p in ("q_proj", "o_proj")]
    wanted += ["model.embed_tokens.weight", "model.norm.weight"]
    for name in wanted:
        if name not in suspect:
            raise UsageError(f"the suspect has no tensor '{name}': trace reads the Llama layout of the reference's "
                             f"family ({geometry.layers} layers)")
    hidden = suspect["model.embed_tokens.weight"].shape[1]
    if hidden != geometry.hidden:
        raise UsageError(f"the suspect's hidden size is {hidden}, the reference's {geometry.hidden}: it is not a copy "
                         "of this reference's architecture")
    name = "model.layers.0.self_attn.q_proj.weight"
    if tuple(suspect[name].shape) != tuple(reference[name].shape):
        raise UsageError(f"the suspect's {name} has shape {tuple(suspect[name].shape)}, the reference's "
                         f"{tuple(reference[name].shape)}")


def trace(suspect: Path, reference: Checkpoint, *, ledger: Path, secret_file: str | Path | None = None,
          suspect_name: str | None = None, progress: Progress = None) -> TraceReport:
    """Score every recipient of `reference` in `ledger` against `suspect`.

    Raises:
        UsageError: bad suspect (missing, hostile, pickled, another architecture), unsupported family, ledger
            or secret that do not match the reference, a torch whose pattern stream changed.
    """
    from packager.stages.fingerprint import publisher_secret, source_digest

    say = reporter(progress)
    start = time.process_time()
    try:
        check_supported(reference.config)
    except ValueError as err:
        raise UsageError(f"cannot trace: {err}",
                         hint="trace supports the families listed in docs/INTERFACE.md") from err
    publisher = publisher_secret(secret_file, ledger, create=False)
    entries = read_ledger(ledger)
    digest = source_digest(reference)
    of_source = issued(entries, source_digest=digest)
    if not of_source:
        raise UsageError(f"the ledger '{ledger}' lists no fingerprinted release of this reference",
                         hint="pass the source checkpoint the releases were converted from, unchanged")
    mine = issued(entries, source_digest=digest, publisher_secret_id=secret_id(publisher.value))
    if not mine:
        raise UsageError("the secret is not the one this ledger's releases of this reference were made with",
                         hint="pass the publisher secret with --secret-file (or UNSWIFT_SECRET)")
    if any(e["pattern_digest"] != pattern_digest() for e in mine):
        raise UsageError(f"this torch ({torch.__version__}) draws other patterns than the ledger's releases were "
                         "made with; trace with the torch version the ledger names")
    profiles = sorted({e["profile"] for e in mine})
    if len(profiles) != 1:
        raise UsageError(f"the ledger names {len(profiles)} profiles for this reference; trace expects one")
    profile = from_tensors(load_profile(ledger, profiles[0]))
    if profile_digest(profile) != mine[0]["profile_digest"]:
        raise UsageError(f"fingerprint profile '{profiles[0]}' does not match the ledger's digest")
    recipients = list(dict.fromkeys(e["recipient"] for e in mine))
    geometry = Geometry.from_config(reference.config)
    source = CheckpointTensors(reference)
    kind, tensors, config = open_suspect(Path(suspect), reference)
    say(f"suspect: {kind}; ledger: {len(recipients)} recipient(s) of this reference")
    _check_shapes(tensors, geometry, source)
    matches = None
    notes = []
    if config is not None:
        recorded = (config["unswift"].get("hardening") or {}).get("secret_id")
        matches = next((e["recipient"] for e in mine if recorded and e.get("secret_id") == recorded), None)
        notes.append("release: MLPs rebuilt by the kerckhoffs attack (no secret used), then aligned")
    keys = {name: recipient_key(publisher.value, name) for name in recipients}
    say("aligning the suspect to the reference and scoring every recipient")
    try:
        result = trace_keys(source, tensors, geometry, profile, keys)
    except KeyError as err:
        raise UsageError(f"the suspect lacks tensor {err} of the reference's layout") from err
    seconds = {"total_process": round(time.process_time() - start, 3),
               **{k: round(v, 3) for k, v in result.seconds.items()}}
    return TraceReport(suspect=suspect_name or str(suspect), suspect_format=kind, reference=reference.name,
                       fields=result.to_json(), release_secret_id_matches=matches, seconds=seconds, notes=notes)
