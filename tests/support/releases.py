"""Small fake release folders, keys and tamperings for the signing, card and verify tests.

The real converter is tested elsewhere; these folders only need the files a release has.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import model_signing
import torch
from cryptography.hazmat.primitives import serialization
from safetensors.torch import save_file

from packager.formats.files import sha256_file

#: Files of the fake release, `model.sig` aside; the tamper suites run over each.
RELEASE_FILES = (
    "README.md",
    "config.json",
    "configuration_unswift.py",
    "generation_config.json",
    "model.safetensors",
    "modeling_unswift.py",
    "tokenizer_config.json",
    "unswift.json",
)


def sample_record() -> dict:
    """A release record as docs/FORMAT.md describes it, with plausible measurements filled in."""
    transform = {
        "format_version": 1, "base_model_type": "llama", "family": "llama", "activation": "silu",
        "gated": True, "order": 8, "basis": "chebyshev", "fit": "weighted", "extrapolation": "linear",
        "coverage": 0.6875,
        "layers": [{"expanded": 88, "intermediate": 128}, {"expanded": 88, "intermediate": 128}],
        "hardening": {"enabled": True, "signs": True, "scales": True, "permutation": True,
                      "secret_id": "3f9a0c1d2e4b5a69"},
        "calibration": {"tokens": 4096, "seed": 0, "source": "self-sampled", "interval": "quantile"},
        "dtype": "float32",
    }
    return {
        "format_version": 1,
        "tool": {"name": "unswift", "version": "0.1.0"},
        "transformers": ">=5.0,<6",
        "source": {"name": "tiny-llama", "base_model": "example-org/tiny-llama", "license": "apache-2.0",
                   "model_type": "llama", "architecture": "LlamaForCausalLM", "dtype": "float32",
                   "num_parameters": 98765, "files": {"model.safetensors": "ab" * 32}},
        "transform": transform,
        "calibration": {"tokens": 4096, "seed": 0, "source": "self-sampled",
                        "outside_interval_fraction": 0.00071},
        "inputs": {"source": "cd" * 32},
        "size": {"release_bytes": 3456789, "source_bytes": 1234567},
        "eval": {"top1_agreement": 0.99612, "kl_mean": 0.0023817, "ppl_reference": 11.4072,
                 "ppl_release": 11.5381, "greedy_match": 0.8125, "eval_tokens": 8192, "coverage": 0.6875,
                 "order": 8,
                 "noise_floor": {"top1_agreement": 0.99987, "kl_mean": 3.1e-09, "ppl_release": 11.4073},
                 "text_source": "self-sampled:eval:seed=1000", "calibration_overlap": False,
                 "dtype": "float32", "device": "cpu", "hardware": "Example CPU @ 3.0GHz, 2 cores"},
        "bench": [
            {"device": "cpu", "dtype": "float32", "batch": 1, "decode_slowdown": 2.37,
             "prefill_slowdown": 1.64, "predicted_decode_slowdown": 2.52,
             "hardware": "Example CPU @ 3.0GHz, 2 cores", "threads": 1, "clock": "process_cpu", "context": 512},
            {"device": "cpu", "dtype": "float32", "batch": 8, "decode_slowdown": 2.91,
             "prefill_slowdown": 1.77, "predicted_decode_slowdown": 2.52,
             "hardware": "Example CPU @ 3.0GHz, 2 cores", "threads": 1, "clock": "process_cpu", "context": 512},
        ],
        "audit": {"protected_param_fraction": 0.4419,
                  "attacks": [{"name": "coefficient_ratio", "recovered_fraction": 0.0231,
                               "relative_error": 0.734, "seconds": 1.83, "rebuilt_top1": 0.0458},
                              {"name": "kerckhoffs", "recovered_fraction": 0.9962, "relative_error": 0.00043,
                               "seconds": 47.2, "rebuilt_top1": 0.9917}],
                  "leaks": [], "hardware": "Example CPU @ 3.0GHz, 2 cores"},
        "signing": {"key_fingerprint": None},
        "payload": {},
    }  # fmt: skip


def make_release(root: Path, record: dict | None = None) -> Path:
    """Write a small fake release folder (unsigned, no README) at `root` and return it."""
    root.mkdir(parents=True)
    config = {"model_type": "unswift_llama", "architectures": ["UnswiftLlamaForCausalLM"], "hidden_size": 16,
              "auto_map": {"AutoConfig": "configuration_unswift.UnswiftConfig"},
              "unswift": {"format_version": 1}}
    (root / "config.json").write_text(json.dumps(config, indent=2))
    (root / "configuration_unswift.py").write_text("from transformers import PretrainedConfig\n")
    (root / "modeling_unswift.py").write_text("import torch\n\n\ndef forward(x):\n    return x * 2\n")
    (root / "generation_config.json").write_text('{"do_sample": false}\n')
    (root / "tokenizer_config.json").write_text('{"model_max_length": 256}\n')
    generator = torch.Generator().manual_seed(0)
    tensors = {"model.layers.0.mlp.theta": torch.randn(16, 40, generator=generator),
               "model.layers.0.mlp.in_proj.weight": torch.randn(64, 16, generator=generator)}
    metadata = {"format": "pt", "unswift_format_version": "1"}
    save_file(tensors, str(root / "model.safetensors"), metadata=metadata)
    (root / "unswift.json").write_text(json.dumps(record or sample_record(), indent=2))
    return root


def write_key(path: Path, private_key) -> Path:
    """Write any private key as a password-less PKCS#8 PEM file (for keys `keygen` would not make)."""
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    return path


def model_signing_verify(folder: Path, public_key: Path, *, allow_symlinks: bool = False,
                         ignore: tuple[str, ...] = ()) -> None:
    """The real model_signing verifier, configured as its `verify key` CLI does (raises ValueError)."""
    hashing = model_signing.hashing.Config().set_ignored_paths(
        paths=[*ignore, folder / "model.sig"], ignore_git_paths=True
    ).set_allow_symlinks(allow_symlinks)
    verifier = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key)
    verifier.set_hashing_config(hashing).verify(folder, folder / "model.sig")


def flip_byte(path: Path, where: str) -> None:
    data = bytearray(path.read_bytes())
    index = {"start": 0, "middle": len(data) // 2, "end": len(data) - 1}[where]
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))


TAMPERS = {
    "start": lambda path: flip_byte(path, "start"),
    "middle": lambda path: flip_byte(path, "middle"),
    "end": lambda path: flip_byte(path, "end"),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "deleted": lambda path: path.unlink(),
}


def hub_cache_snapshot(release: Path, cache: Path) -> Path:
    """Lay `release` out as the HF cache does: blobs named by hash, snapshot files as relative symlinks."""
    blobs = cache / "blobs"
    snapshot = cache / "snapshots" / ("0" * 40)
    blobs.mkdir(parents=True)
    for path in sorted(release.rglob("*")):
        if path.is_file():
            relative = path.relative_to(release)
            blob = blobs / sha256_file(path)
            shutil.copyfile(path, blob)
            link = snapshot / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot
