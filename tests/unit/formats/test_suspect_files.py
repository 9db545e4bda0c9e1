"""Hostile suspect files are refused before any tensor is read; the ledger never holds a secret."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file
from support.gguf_files import write_gguf

from packager.errors import UsageError
from packager.formats.ledger import append_entry, read_ledger
from packager.formats.suspect import GGUFTensors, check_safetensors, suspect_kind, unpermute_rows


def _raw_safetensors(path, header: dict, data: bytes = b"") -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def test_a_good_file_passes(tmp_path):
    save_file({"a": torch.ones(3, 4), "b": torch.zeros(2)}, str(tmp_path / "ok.safetensors"))
    found = check_safetensors(tmp_path / "ok.safetensors")
    assert found["a"].shape == (3, 4) and found["b"].end - found["b"].begin == 8


@pytest.mark.parametrize("header, data, words", [
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
      "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, bytes(24), "overlap"),
    ({"a": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4 << 40]}}, bytes(16), "claims bytes"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8), "claims bytes"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, bytes(16), "claims bytes"),
    ({"a": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, bytes(16), "negative"),
    ({"a": {"dtype": "XX", "shape": [4], "data_offsets": [0, 16]}}, bytes(16), "unknown dtype"),
    ({"a": {"shape": [4]}}, bytes(16), "lacks"),
])
def test_hostile_safetensors_headers_are_refused(tmp_path, header, data, words):
    path = tmp_path / "bad.safetensors"
    _raw_safetensors(path, header, data)
    with pytest.raises(UsageError, match=words):
        check_safetensors(path)


def test_absurd_header_length_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 62) + b"{}")
    with pytest.raises(UsageError, match="header length"):
        check_safetensors(path)
    (tmp_path / "short.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(UsageError, match="shorter"):
        check_safetensors(tmp_path / "short.safetensors")


def test_pickled_weights_are_refused(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"not even read")
    (folder / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="pickled"):
        suspect_kind(folder)
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(UsageError, match="pickled"):
        suspect_kind(tmp_path / "model.pt")


def _gguf(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {"model.embed_tokens.weight": torch.randn(32, 64, generator=g),
             "model.norm.weight": torch.ones(64),
             "model.layers.0.self_attn.q_proj.weight": torch.randn(64, 64, generator=g),
             "model.layers.0.self_attn.k_proj.weight": torch.randn(32, 64, generator=g)}
    return state, write_gguf(state, tmp_path / "m.gguf", heads=4, kv_heads=2, quant="F32")


def test_gguf_reads_back_in_llama_names_and_row_order(tmp_path):
    state, path = _gguf(tmp_path)
    tensors = GGUFTensors(path, heads=4, kv_heads=2)
    for name, tensor in state.items():
        assert torch.equal(tensors[name], tensor), name
    assert torch.equal(unpermute_rows(torch.arange(8.0).reshape(8, 1), 1).flatten(),
                       torch.tensor([0.0, 2, 4, 6, 1, 3, 5, 7]))


@pytest.mark.parametrize("keep", [200, -100])
def test_truncated_gguf_is_refused(tmp_path, keep):
    _, path = _gguf(tmp_path)
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(keep if keep > 0 else size + keep)
    with pytest.raises(UsageError, match="malformed"):
        GGUFTensors(path, heads=4, kv_heads=2)


def test_not_a_gguf_is_refused(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(UsageError, match="magic"):
        GGUFTensors(tmp_path / "x.gguf", heads=4, kv_heads=2)


def test_ledger_appends_and_refuses_unknown_fields(tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    entry = {"recipient": "acme", "release_digest": "d", "secret_id": "s", "publisher_secret_id": "p",
             "source_digest": "x", "profile": "f", "profile_digest": "g", "pattern_digest": "h"}
    append_entry(ledger, entry)
    append_entry(ledger, {"event": "pushed", "recipient": "acme", "repo": "org/m", "release_digest": "d"})
    assert [e["recipient"] for e in read_ledger(ledger)] == ["acme", "acme"]
    with pytest.raises(ValueError, match="unknown"):
        append_entry(ledger, {**entry, "secret": "hunter2"})
    assert "hunter2" not in ledger.read_text() and len(read_ledger(ledger)) == 2
    ledger.write_text(ledger.read_text() + "{not json\n")
    with pytest.raises(UsageError, match="line 3"):
        read_ledger(ledger)
