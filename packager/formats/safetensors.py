"""safetensors headers: every tensor's name, dtype and shape, read without reading any tensor data.

The format (https://github.com/huggingface/safetensors, "Format"): an 8-byte little-endian header
length, a JSON header, then the tensors' bytes. Plans, the bytes model and the copy layout of a
conversion need only the header, so a checkpoint larger than memory is sized in milliseconds.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from packager.maths.sizing import TensorSpec


def read_header(file: Path) -> dict[str, TensorSpec]:
    """The tensors of one safetensors file, from its JSON header (the data is never read)."""
    with open(file, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return {name: TensorSpec(tuple(entry["shape"]), entry["dtype"]) for name, entry in header.items()}


def folder_tensors(folder: Path) -> dict[str, TensorSpec]:
    """Every tensor of a checkpoint or release folder (sharded or not)."""
    tensors: dict[str, TensorSpec] = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(read_header(file))
    return tensors
