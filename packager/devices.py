"""Which device work runs on: the default (CUDA when this torch build sees a GPU, else the CPU)."""

from __future__ import annotations


def default_device() -> str:
    """"cuda" when this torch build sees a CUDA device, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
