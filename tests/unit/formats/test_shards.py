"""The streaming shard writer: standard safetensors files, read back by the real safetensors library."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from packager.formats.files import sha256_file
from packager.formats.shards import Entry, ShardStream, layout


def _tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(7, 5, generator=generator),
        "theta": torch.randn(3, 11, generator=generator).to(torch.bfloat16),
        "half": torch.randn(4, generator=generator).to(torch.float16),
        "positions": torch.arange(6, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "transposed": torch.randn(6, 4, generator=generator).t(),  # not contiguous
    }


def _stream(folder, tensors, limit):
    entries = [Entry(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]
    stream = ShardStream(folder, entries, limit, {"format": "pt"})
    try:
        for name, tensor in tensors.items():
            stream.put(name, tensor)
        return stream.finish()
    finally:
        stream.close()


@pytest.mark.parametrize("limit", [1 << 30, 64])
def test_shards_read_back_exactly_with_their_digests(tmp_path, limit):
    tensors = _tensors()
    digests = _stream(tmp_path, tensors, limit)
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    expected = layout([Entry(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], limit)[-1].shard + 1
    assert sorted(digests) == files and len(files) == expected and (expected > 1) == (limit == 64)
    read = {}
    for name in files:
        assert digests[name] == sha256_file(tmp_path / name)
        with safe_open(tmp_path / name, framework="pt") as handle:
            assert handle.metadata() == {"format": "pt"}
            read.update({key: handle.get_tensor(key) for key in handle.keys()})
    assert set(read) == set(tensors)
    for name, tensor in tensors.items():
        assert read[name].dtype == tensor.dtype and torch.equal(read[name], tensor), name
    if len(files) > 1:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(tensors) and set(index["weight_map"].values()) == set(files)
        assert files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    else:
        assert files == ["model.safetensors"]


def test_layout_keeps_order_and_limit():
    entries = [Entry(f"t{i}", torch.float32, (10,)) for i in range(7)]  # 40 bytes each
    placed = layout(entries, 100)
    assert [e.name for e in placed] == [e.name for e in entries]
    assert [e.shard for e in placed] == [0, 0, 1, 1, 2, 2, 3]
    assert [e.start for e in placed] == [0, 40, 0, 40, 0, 40, 0]
    big = layout([Entry("a", torch.float32, (10,)), Entry("huge", torch.float32, (1000,))], 100)
    assert [e.shard for e in big] == [0, 1]  # a tensor larger than the limit gets a shard of its own


def test_a_tensor_out_of_layout_is_refused(tmp_path):
    stream = ShardStream(tmp_path, [Entry("a", torch.float32, (2,)), Entry("b", torch.float32, (3,))], 1 << 20, {})
    try:
        with pytest.raises(ValueError, match="does not match"):
            stream.put("b", torch.zeros(3))
        with pytest.raises(ValueError, match="does not match"):
            stream.put("a", torch.zeros(3))
        stream.put("a", torch.zeros(2))
        with pytest.raises(ValueError, match="never written"):
            stream.finish()
    finally:
        stream.close()


def test_a_failure_in_the_writer_reaches_the_caller(tmp_path):
    folder = tmp_path / "gone"  # the writer cannot create its file here
    stream = ShardStream(folder, [Entry("a", torch.float32, (2,)), Entry("b", torch.float32, (2,))], 1 << 20, {})
    try:
        stream.put("a", torch.zeros(2))
        with pytest.raises(FileNotFoundError):
            stream.put("b", torch.zeros(2))
            stream.finish()
    finally:
        stream.close()
    assert not any(thread.is_alive() for thread in stream.threads)


def test_written_release_equals_the_reference_transform_across_reused_buffers(tmp_path):
    """Five layers (output memory reused from unit 3 on), tiny shards (many files): every released tensor
    equals the float64 reference transform rounded once to float32, and the record's digests match."""
    from safetensors.torch import load_file
    from support.tiny import build_tiny

    from packager import api
    from packager.formats.checkpoint import open_checkpoint
    from packager.formats.record import read_record
    from packager.maths.transform import boost_channels, select_channels
    from packager.stages.options import ConvertOptions
    from packager.stages.plan.fits import plan_layers
    from packager.stages.tensors import layer_tensors

    source = open_checkpoint(build_tiny("llama", tmp_path / "five", num_hidden_layers=5, wide_channels=2))
    stats = api.calibrate(source, text=None, tokens=512)
    options = ConvertOptions(order=6, coverage=0.9, max_shard_bytes=40_000)
    out = tmp_path / "release"
    (tmp_path / "secret").write_bytes(b"s" * 32)
    api.convert(source, out, stats=stats, options=options, secret_file=tmp_path / "secret")
    released = {}
    for file in sorted(out.glob("*.safetensors")):
        released.update(load_file(file))
    assert len(list(out.glob("*.safetensors"))) > 3
    record = read_record(out)
    for name, digest in record["payload"].items():
        assert sha256_file(out / name) == digest, name
    plans = plan_layers(source, stats, options)
    masks = select_channels(plans, 0.9, options.fit)
    boosts = boost_channels(plans, masks, options.order)
    for index in range(5):
        for name, exact in layer_tensors(source, plans, masks, options, b"s" * 32, index, boosts).items():
            error = (released[name].double() - exact).abs()
            assert bool((error <= 2**-22 * exact.abs() + 1e-30).all()), name
