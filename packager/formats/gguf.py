"""Turn a GGUF file into an ordinary safetensors checkpoint once, cached by the file's digest.

transformers dequantises GGUF tensors to float on load; the result is saved so that every later stage
can stream it like any other checkpoint. Needs the `gguf` and `accelerate` packages.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from packager.errors import UsageError
from packager.formats.files import sha256_file


def cache_root() -> Path:
    return Path(os.environ.get("UNSWIFT_CACHE", Path.home() / ".cache" / "unswift"))


def materialise_gguf(gguf_path: Path, out_dir: Path | None = None) -> Path:
    """Dequantise `gguf_path` into a float32 safetensors checkpoint folder (with tokenizer)."""
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise UsageError("reading GGUF files needs the gguf package", hint="pip install 'unswift[gguf]'") from err
    if out_dir is None:
        out_dir = cache_root() / "gguf" / sha256_file(gguf_path)[:16] / gguf_path.stem
    if (out_dir / "config.json").is_file():
        return out_dir
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_path.parent, gguf_path.name
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    settings = quantised.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "transformers_version"):
        settings.pop(key, None)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**settings), dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".gguf-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
