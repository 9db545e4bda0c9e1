"""`audit --export-rebuilt DIR`: what the strongest attack rebuilt, as a plain transformers checkpoint.

Publishers can evaluate what an attacker gets with any tool, and trace can be tested on it. The folder is
a checkpoint of the source's architecture (config.json without the `unswift` section and `auto_map`,
standard tensor names, safetensors, the release's tokenizer), so it loads with
`AutoModelForCausalLM.from_pretrained(DIR)` and no remote code. Channels are in the attacker's order
(the release's), which is the same function. Dense families only: a mixture of experts would need
its experts re-packed as the family stores them.

Memory: the rebuilt MLPs of every unit and one copied tensor at a time are held while writing; the
audit already holds the whole release model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from packager.errors import UsageError
from packager.formats.atomic import atomic_folder, check_output
from packager.formats.names import CONFIG, GENERATION_CONFIG
from packager.formats.release import ReleaseFiles
from packager.maths.architectures import REGISTRY
from packager.stages.audit.attacks import RecoveredMLP

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")


def check_export(out: Path, release: ReleaseFiles, *, overwrite: bool = False) -> None:
    """Refuse an export that cannot be written, before any attack runs."""
    check_output(out, overwrite=overwrite)
    if release.spec.get("experts"):
        raise UsageError("--export-rebuilt supports dense families only (this release has experts)")


def export_rebuilt(out: Path, release: ReleaseFiles, recovered: dict[int, RecoveredMLP], *,
                   overwrite: bool = False) -> Path:
    """Write the rebuilt plain checkpoint to `out` atomically; returns `out`.

    Raises:
        UsageError: the release is not of a dense family, or a rebuilt unit has a bias its family lacks.
    """
    from safetensors.torch import save_file

    check_export(out, release, overwrite=overwrite)
    architecture = (release.record.get("source") or {}).get("architecture")
    adapter = REGISTRY.get(architecture)
    if adapter is None:
        raise UsageError(f"cannot export: the release's source architecture {architecture!r} is unknown")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[release.spec["dtype"]]
    units = release.units
    tensors: dict[str, torch.Tensor] = {}
    replaced = tuple(unit + "." for unit in units)
    for key in release.key_to_file:
        if not key.startswith(replaced):
            tensors[key] = release.tensor(key).contiguous()
    for index, unit in enumerate(units):
        mlp = recovered[index]
        parts = {adapter.gate: (mlp.gate, mlp.gate_bias), adapter.down: (mlp.down, mlp.down_bias)}
        if adapter.fused:
            parts = {adapter.gate: (torch.cat([mlp.gate, mlp.up]), None), adapter.down: (mlp.down, mlp.down_bias)}
        elif adapter.up is not None:
            parts[adapter.up] = (mlp.up, mlp.up_bias)
        for name, (weight, bias) in parts.items():
            tensors[f"{unit}.{name}.weight"] = weight.to(dtype).contiguous()
            if bias is not None and bool(bias.abs().max() > 0):
                tensors[f"{unit}.{name}.bias"] = bias.to(dtype).contiguous()
    config = dict(release.config)
    config.pop("unswift", None)
    config.pop("auto_map", None)
    config["model_type"] = release.spec["base_model_type"]
    config["architectures"] = [architecture]
    with atomic_folder(out, overwrite=overwrite) as staging:
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        for name in (*_TOKENIZER_FILES, GENERATION_CONFIG):
            if (release.path / name).is_file():
                shutil.copyfile(release.path / name, staging / name)
    return out
