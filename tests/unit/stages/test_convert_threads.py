"""Conversion writes the same bytes whatever torch's thread count (the fits spread over threads)."""

from __future__ import annotations

import json

import torch
from support.tiny import build_tiny

from packager import api
from packager.stages.options import ConvertOptions


def test_release_payload_is_the_same_on_one_thread_and_two(tmp_path):
    # 600 channels per MLP: more than one block of fits (packager.maths.series.fit._CHANNEL_BLOCK).
    source = build_tiny("llama", tmp_path / "llama", intermediate_size=600)
    stats = tmp_path / "stats.safetensors"
    api.calibrate(source, tokens=256, out=stats)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(range(32)))
    payloads = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = tmp_path / f"release-{threads}"
            api.convert(source, out, stats=stats, options=ConvertOptions(order=8, coverage=0.9),
                        secret_file=secret)
            payloads.append(json.loads((out / "unswift.json").read_text())["payload"])
    finally:
        torch.set_num_threads(previous)
    assert payloads[0] == payloads[1] and payloads[0]
