"""Open a source checkpoint (local folder, Hub repo id or GGUF file) lazily, tensor by tensor.

Tensors are read from safetensors with `safe_open`, so conversion holds one layer at a time; the full
model is instantiated only where a forward pass is needed (calibration, evaluation).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, PretrainedConfig

from packager.errors import UsageError
from packager.formats.files import sha256_file
from packager.maths.architectures import Adapter, adapter_for

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
LICENSE_PREFIXES = ("LICENSE", "LICENCE", "USE_POLICY", "NOTICE", "COPYING")
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


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

    @cached_property
    def source_dtype(self) -> torch.dtype:
        """The dtype of the checkpoint's floating weights (the MLP's), read without loading them."""
        key = self.adapter.key(0, self.adapter.down)
        with safe_open(self.key_to_file[key], framework="pt") as handle:
            return _SAFETENSORS_DTYPES[handle.get_slice(key).get_dtype()]

    def num_parameters(self) -> int:
        total = 0
        for file in self.weight_files:
            with safe_open(file, framework="pt") as handle:
                for key in handle.keys():
                    shape = handle.get_slice(key).get_shape()
                    count = 1
                    for size in shape:
                        count *= size
                    total += count
        return total

    def file_digests(self) -> dict[str, str]:
        """SHA-256 of the files that define the source: config and weights (names only, no paths).

        Memoised per file (path, size, mtime) for the process: a release asks several times, and
        `convert.write_release` starts the hashing on a thread of its own while it writes.
        """
        files = [self.path / "config.json", *self.weight_files]
        return {f.name: _memoised_sha256(f) for f in files}

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
    index = path / "model.safetensors.index.json"
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


def open_checkpoint(spec: str | Path, *, revision: str | None = None) -> Checkpoint:
    """Open CHECKPOINT as the CLI accepts it: a local folder, a GGUF file or a Hub repo id.

    Raises:
        UsageError: the path does not exist, is not a transformers checkpoint, has no safetensors
            weights, or its architecture is not supported.
    """
    text = str(spec)
    path = Path(text).expanduser()
    name = path.name
    if path.is_file() and path.suffix == ".gguf":
        from packager.formats.gguf import materialise_gguf

        path = materialise_gguf(path)
    elif not path.exists():
        if _REPO_ID.match(text) and not text.startswith((".", "/")):
            from packager.publish.hub import download_release

            path, name = download_release(text, revision=revision), text
        else:
            raise UsageError(f"checkpoint '{text}' not found: expected a local folder or a Hub repo id org/name")
    if not path.is_dir():
        raise UsageError(f"checkpoint '{text}' is not a folder: pass the folder that holds config.json")
    if not (path / "config.json").is_file():
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


_DIGESTS: dict[tuple, str] = {}
_DIGEST_LOCKS: dict[tuple, threading.Lock] = {}
_REGISTRY_LOCK = threading.Lock()


def _memoised_sha256(path: Path) -> str:
    """sha256_file, once per (path, size, mtime) per process; a second caller waits for the first."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _REGISTRY_LOCK:
        lock = _DIGEST_LOCKS.setdefault(key, threading.Lock())
    with lock:
        if key not in _DIGESTS:
            _DIGESTS[key] = sha256_file(path)
        return _DIGESTS[key]
