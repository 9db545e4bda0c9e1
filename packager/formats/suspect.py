"""A suspect model's tensors, read as tensors only: safetensors files and GGUF files, checked first.

A suspect comes from whoever leaked it, so every file is treated as hostile: nothing of it is executed
(no pickle, no `trust_remote_code`, no Python file of the suspect is imported), its headers are checked
against the file's size before any tensor is read, and tensors are read one at a time on demand.

- safetensors (`check_safetensors`): the 8-byte header length must fit the file and `MAX_HEADER`; every
  entry needs a known dtype, non-negative integer dims, `data_offsets` whose length equals the dims'
  product times the dtype's size, inside the data section, and no two entries may overlap.
- GGUF (`GGUFTensors`): the magic, then the `gguf` package's parser (memory-mapped), then every tensor's
  `[data_offset, data_offset + n_bytes)` must lie inside the file. Tensors are dequantised to float32 one
  at a time and renamed to the Llama layout; llama.cpp's q/k row interleaving (`permute` in its
  converter, applied to the `llama` architecture) is undone.
- pickled weights (`*.bin`, `*.pt`, `*.pth`, `*.pkl`, `*.ckpt`) are refused: loading them runs code.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from packager.dtypes import CODE_SIZES
from packager.errors import UsageError

#: The largest safetensors header accepted (the safetensors library's own limit).
MAX_HEADER = 100 * 1024 * 1024
PICKLED = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _bad(file: Path, why: str) -> UsageError:
    return UsageError(f"suspect file '{file}' is malformed: {why}; nothing was read from it",
                      hint="trace reads safetensors and GGUF files only, exactly as their headers describe them")


def check_safetensors(file: Path) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file, after checking its header against the file (no data read).

    Raises:
        UsageError: the header is absurd, truncated, overlapping or points outside the file.
    """
    size = file.stat().st_size
    if size < 8:
        raise _bad(file, "shorter than the 8-byte header length")
    with open(file, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > MAX_HEADER or length > size - 8:
            raise _bad(file, f"header length {length} exceeds the file ({size} bytes) or {MAX_HEADER} bytes")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _bad(file, f"header is not JSON ({err})") from err
    if not isinstance(header, dict):
        raise _bad(file, "header is not a JSON object")
    header.pop("__metadata__", None)
    data = size - 8 - length
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as err:
            raise _bad(file, f"entry {name!r} lacks dtype, shape or data_offsets") from err
        if dtype not in CODE_SIZES:
            raise _bad(file, f"entry {name!r} has unknown dtype {dtype!r}")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape) or \
                not all(isinstance(o, int) and not isinstance(o, bool) for o in (begin, end)):
            raise _bad(file, f"entry {name!r} has a non-integer or negative shape or offset")
        numel = 1
        for d in shape:
            numel *= d
        if not 0 <= begin <= end <= data or end - begin != numel * CODE_SIZES[dtype]:
            raise _bad(file, f"entry {name!r} claims bytes [{begin}, {end}) for {numel} {dtype} elements, "
                             f"in a data section of {data} bytes")
        tensors[name] = TensorInfo(dtype, shape, begin, end)
    spans = sorted((t.begin, t.end, n) for n, t in tensors.items() if t.end > t.begin)
    for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:], strict=False):
        if begin_b < end_a:
            raise _bad(file, f"entries {a!r} and {b!r} overlap")
    return tensors


class SafetensorsTensors(Mapping):
    """Tensors of checked safetensors files, read one at a time (a later file wins a duplicate name)."""

    def __init__(self, files: list[Path]) -> None:
        self.files: dict[str, Path] = {}
        self.info: dict[str, TensorInfo] = {}
        for file in files:
            found = check_safetensors(file)
            self.info.update(found)
            self.files.update({name: file for name in found})

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.files[name]), framework="pt") as handle:
            return handle.get_tensor(name)

    def __contains__(self, name: object) -> bool:
        return name in self.files

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


# -- GGUF -----------------------------------------------------------------------------------------------

_GGUF_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}
_GGUF_LAYER = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
               "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
               "ffn_down": "mlp.down_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}


def llama_name_of_gguf(name: str) -> str | None:
    """The Llama-layout name of a GGUF tensor name (None for tensors trace does not read)."""
    if name in _GGUF_GLOBAL:
        return _GGUF_GLOBAL[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _GGUF_LAYER:
        return f"model.layers.{parts[1]}.{_GGUF_LAYER[parts[2]]}.{parts[3]}"
    return None


def unpermute_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row order (each head's rotary halves interleaved) back to transformers'."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


class GGUFTensors(Mapping):
    """The tensors of a checked GGUF file under Llama names, dequantised to float32 one at a time.

    `heads`/`kv_heads` come from the reference's config (needed to undo llama.cpp's q/k row order).

    Raises (on construction):
        UsageError: not a GGUF file, truncated, malformed, or a tensor outside the file; the gguf package
            is missing.
    """

    def __init__(self, file: Path, *, heads: int, kv_heads: int) -> None:
        try:
            import gguf
        except ImportError as err:
            raise UsageError("reading GGUF files needs the gguf package", hint="pip install 'unswift[gguf]'") from err
        size = file.stat().st_size
        with open(file, "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise _bad(file, "it does not start with the GGUF magic")
        try:
            reader = gguf.GGUFReader(str(file), "r")
            field = reader.fields.get("general.architecture")
            self.architecture = bytes(field.parts[field.data[0]]).decode() if field is not None else ""
            tensors = list(reader.tensors)
        except (ValueError, IndexError, KeyError, TypeError, struct.error, OverflowError, UnicodeDecodeError) as err:
            raise _bad(file, f"truncated or not a GGUF file the gguf package can parse ({err})") from err
        self.file, self.heads, self.kv_heads = file, heads, kv_heads
        self.tensors = {}
        for tensor in tensors:
            if int(tensor.data_offset) + int(tensor.n_bytes) > size:
                raise _bad(file, f"tensor {tensor.name!r} lies beyond the end of the file")
            name = llama_name_of_gguf(tensor.name)
            if name is not None:
                self.tensors[name] = tensor
        self.quantisation = sorted({t.tensor_type.name for t in self.tensors.values()})

    def __getitem__(self, name: str) -> torch.Tensor:
        import gguf.quants as quants
        import numpy as np

        tensor = self.tensors[name]
        values = np.asarray(quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        out = torch.from_numpy(values.copy())
        if self.architecture == "llama" and name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
            out = unpermute_rows(out, self.heads if "q_proj" in name else self.kv_heads)
        return out

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)


# -- what a suspect path is ------------------------------------------------------------------------------


def suspect_kind(path: Path) -> str:
    """"gguf", "release" (a folder whose config has an `unswift` section) or "safetensors".

    Raises:
        UsageError: missing, not a folder or .gguf file, pickled weights only, or no weights at all.
    """
    if not path.exists():
        raise UsageError(f"suspect '{path}' not found: pass a release folder, a safetensors folder, a .gguf "
                         "file or a Hub repo id")
    if path.is_file():
        if path.suffix == ".gguf":
            return "gguf"
        if path.suffix in PICKLED:
            raise UsageError(f"suspect '{path}' is a pickled checkpoint: loading it would run code it holds, "
                             "and trace never does", hint="convert it to safetensors in a sandbox first")
        raise UsageError(f"suspect '{path}' is neither a folder nor a .gguf file")
    if not any(path.glob("*.safetensors")):
        if any(p.suffix in PICKLED for p in path.iterdir()):
            raise UsageError(f"suspect '{path}' holds pickled weights only (.bin/.pt): loading them would run "
                             "code they hold, and trace never does",
                             hint="convert them to safetensors in a sandbox first")
        raise UsageError(f"suspect '{path}' holds no .safetensors weights")
    config = path / "config.json"
    if config.is_file():
        try:
            if isinstance(parsed := json.loads(config.read_text()), dict) and parsed.get("unswift"):
                return "release"
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UsageError(f"suspect '{path}/config.json' is not JSON: {err}") from err
    return "safetensors"


def safetensors_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))
