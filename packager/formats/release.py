"""A release folder as a reader sees it: `config.json` and its `unswift` spec, the record, the tensors by key.

Attacks, audits and traces read a release the way an attacker or a user would: from its files only,
one tensor at a time (`safe_open`), never the whole model in memory. This module knows the layout of
a release (docs/FORMAT.md); what the tensors mean to an attack is the audit's business.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from packager.errors import UsageError
from packager.formats.names import CONFIG, SHARD_INDEX
from packager.formats.record import read_record

#: Where the MLP units sit when the record does not say (the Llama-style module path).
DEFAULT_LAYERS_PREFIX = "model.layers"


def weight_map(folder: Path) -> dict[str, Path]:
    """The safetensors file holding each tensor: from the shard index if there is one, else every
    `*.safetensors` file of the folder (sorted; a later file wins a duplicate key)."""
    index = folder / SHARD_INDEX
    if index.is_file():
        names = json.loads(index.read_text())["weight_map"]
        return {key: folder / name for key, name in names.items()}
    found: dict[str, Path] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            found.update({key: file for key in handle.keys()})
    return found


class ReleaseFiles:
    """A release folder: its spec, record and tensors (read lazily, tensor by tensor).

    Raises (on construction):
        UsageError: the folder has no `config.json`, its config has no `unswift` spec, the folder has
            no record, or it holds no safetensors weights.
    """

    def __init__(self, release_dir: Path) -> None:
        self.path = Path(release_dir)
        if not (self.path / CONFIG).is_file():
            raise UsageError(f"'{release_dir}' is not an unswift release: it has no {CONFIG}")
        self.config: dict = json.loads((self.path / CONFIG).read_text())
        #: `config.json["unswift"]`: the public transform parameters the loader needs.
        self.spec: dict = self.config.get("unswift")
        if not self.spec:
            raise UsageError(f"'{release_dir}' is not an unswift release: its {CONFIG} has no 'unswift'")
        self.record: dict = read_record(self.path)
        self.key_to_file = weight_map(self.path)
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
        prefix = self.record.get("transform", {}).get("layers_prefix", DEFAULT_LAYERS_PREFIX)
        return [entry.get("unit", f"{prefix}.{i}.mlp") for i, entry in enumerate(self.spec["layers"])]
