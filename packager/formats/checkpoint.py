"""Open a source checkpoint (local folder or GGUF file) lazily, tensor by tensor.

Tensors are read from safetensors with `safe_open`, so conversion holds one layer at a time; the full
model is instantiated only where a forward pass is needed (calibration, evaluation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, PretrainedConfig

from packager.errors import UsageError
from packager.formats.files import memoised_sha256
from packager.formats.names import CONFIG, SHARD_INDEX
from packager.formats.safetensors import read_header
from packager.maths.architectures import Adapter, adapter_for
from packager.maths.sizing import TensorSpec

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
LICENSE_PREFIXES = ("LICENSE", "LICENCE", "USE_POLICY", "NOTICE", "COPYING")


@dataclass(frozen=True)
class Checkpoint:
    """A transformers checkpoint on disk whose weights are safetensors."""

    path: Path
    name: str
    config: PretrainedConfig
    adapter: Adapter
    key_to_file: dict[str, Path] = field(repr=False)

    @property
    def weight_files(self) -> list[Path]:
        return sorted(set(self.key_to_file.values()))

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def tokenizer_files(self) -> list[Path]:
        return [self.path / f for f in TOKENIZER_FILES if (self.path / f).is_file()]

    @property
    def license_files(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if p.is_file() and p.name.upper().startswith(LICENSE_PREFIXES))

    @property
    def has_tokenizer(self) -> bool:
        return any(p.name in ("tokenizer.json", "tokenizer.model", "vocab.json") for p in self.tokenizer_files)

    def tensor(self, key: str) -> torch.Tensor:
        with safe_open(self.key_to_file[key], framework="pt") as handle:
            return handle.get_tensor(key)

    def has(self, key: str) -> bool:
        return key in self.key_to_file

    def tensor_slice(self, key: str, index: int) -> torch.Tensor:
        """`tensor(key)[index]` of a stacked tensor (e.g. one expert), without reading the others."""
        with safe_open(self.key_to_file[key], framework="pt") as handle:
            return handle.get_slice(key)[index]

    def tensor_specs(self) -> dict[str, TensorSpec]:
        """Name, dtype and shape of every tensor, from the safetensors headers (no data is read)."""
        return _headers(tuple(self.weight_files))

    def num_parameters(self) -> int:
        return sum(spec.numel for spec in self.tensor_specs().values())

    def file_digests(self) -> dict[str, str]:
        """SHA-256 of the files that define the source: config and weights (names only, no paths).

        Memoised per file (path, size, mtime) for the process: a release asks several times, and
        `convert.write_release` starts the hashing on a thread of its own while it writes.
        """
        files = [self.path / CONFIG, *self.weight_files]
        return {f.name: memoised_sha256(f) for f in files}

    def load_model(self, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype)
        return model.to(device).eval()

    def load_tokenizer(self):
        if not self.has_tokenizer:
            return None
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path)


def _index_weights(path: Path) -> dict[str, Path]:
    index = path / SHARD_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {key: path / file for key, file in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    mapping: dict[str, Path] = {}
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():
                mapping[key] = file
    return mapping


def open_checkpoint(spec: str | Path, *, name: str | None = None) -> Checkpoint:
    """Open a local checkpoint: a folder of a transformers checkpoint, or a GGUF file.

    A Hub repo id is downloaded first by `packager.api` (this layer never talks to the network); `name`
    is then the repo id, recorded instead of the download folder's name.

    Raises:
        UsageError: the path does not exist, is not a transformers checkpoint, has no safetensors
            weights, or its architecture is not supported.
    """
    text = str(spec)
    path = Path(text).expanduser()
    name = name or path.name
    if path.is_file() and path.suffix == ".gguf":
        from packager.formats.gguf import materialise_gguf

        path = materialise_gguf(path)
    elif not path.exists():
        raise UsageError(f"checkpoint '{text}' not found: expected a local folder or a Hub repo id org/name")
    if not path.is_dir():
        raise UsageError(f"checkpoint '{text}' is not a folder: pass the folder that holds config.json")
    if not (path / CONFIG).is_file():
        raise UsageError(f"'{text}' is not a transformers checkpoint: it has no config.json")
    try:
        config = AutoConfig.from_pretrained(path)
    except (ValueError, KeyError, OSError) as err:
        raise UsageError(f"cannot read '{text}/config.json': {err}") from err
    if str(getattr(config, "model_type", "")).startswith("unswift_"):
        raise UsageError(f"'{text}' is already an unswift release; convert the original checkpoint instead")
    adapter = adapter_for(config)
    key_to_file = _index_weights(path)
    if not key_to_file:
        raise UsageError(
            f"'{text}' has no safetensors weights; re-save it with "
            "`model.save_pretrained(dir, safe_serialization=True)` first"
        )
    name = name if name not in ("", ".") else path.resolve().name
    return Checkpoint(path=path, name=name, config=config, adapter=adapter, key_to_file=key_to_file)


@cache
def _headers(files: tuple[Path, ...]) -> dict[str, TensorSpec]:
    specs: dict[str, TensorSpec] = {}
    for file in files:
        specs.update(read_header(file))
    return specs
