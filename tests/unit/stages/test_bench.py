"""`unswift bench`, the bytes model, `--dry-run` and `--slowdown` on tiny checkpoints (timings never asserted)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from packager.cli import cli
from packager.formats.checkpoint import open_checkpoint
from packager.formats.safetensors import folder_tensors
from packager.maths import sizing


def _json(result) -> dict:
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, (result.stdout, result.stderr)  # --json: exactly one line on stdout
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def uniform_release(tiny_llama, tiny_llama_stats, tmp_path_factory):
    """An order-6 release at coverage 0.75 with one order for every channel (exact shapes)."""
    from packager import api
    from packager.stages.options import ConvertOptions

    out = tmp_path_factory.mktemp("bench") / "uniform"
    api.convert(tiny_llama, out, stats=tiny_llama_stats,
                options=ConvertOptions(order=6, coverage=0.75, allocation="uniform"))
    return out


def test_bytes_model_arithmetic_on_a_tiny_release(tiny_llama, uniform_release):
    source = open_checkpoint(tiny_llama)
    config = source.config
    src, rel = folder_tensors(tiny_llama), folder_tensors(uniform_release)
    layers, hidden, vocab = config.num_hidden_layers, config.hidden_size, config.vocab_size
    intermediate, kv = config.intermediate_size, config.num_key_value_heads
    head_dim = hidden // config.num_attention_heads
    context, batch = 16, 2
    kv_bytes = layers * 2 * kv * head_dim * context * batch * 4
    assert sizing.kv_cache_bytes(config, dtype="float32", context=context, batch=batch) == kv_bytes
    # Every tensor at 4 bytes, except the input embedding: one row per sequence (the head is untied here).
    assert not config.tie_word_embeddings
    everything = sum(spec.numel for spec in src.values()) * 4
    expected = everything - vocab * hidden * 4 + batch * hidden * 4 + kv_bytes
    assert sizing.step_bytes(src, config, dtype="float32", context=context, batch=batch).total == expected
    # In bfloat16 the same arithmetic at 2 bytes.
    assert sizing.step_bytes(src, config, dtype="bfloat16", context=context, batch=batch).total == expected // 2
    # The release replaces gate + up + down (3 I H) by in_proj (2 I H + 2 I) and theta (H (S (N+1) + I - S)).
    expanded = json.loads((uniform_release / "config.json").read_text())["unswift"]["layers"]
    extra = sum(4 * (2 * intermediate + hidden * layer["expanded"] * 6) for layer in expanded)
    ours = sizing.step_bytes(rel, config, dtype="float32", context=context, batch=batch).total
    assert ours == expected + extra
    predicted = sizing.predicted_decode_slowdown(rel, src, config, dtype="float32", context=context, batch=batch)
    assert predicted == pytest.approx(ours / expected)


def test_flops_model_arithmetic_on_a_tiny_release(tiny_llama, uniform_release):
    from packager.maths import flops

    source = open_checkpoint(tiny_llama)
    config = source.config
    src, rel = folder_tensors(tiny_llama), folder_tensors(uniform_release)
    layers, hidden, heads = config.num_hidden_layers, config.hidden_size, config.num_attention_heads
    intermediate, kv = config.intermediate_size, config.num_key_value_heads
    head_dim = hidden // heads
    length = 9
    # Attention: q, k, v, o projections; then 4 heads*head_dim FLOPs per attended position, (9 + 1) / 2 of them.
    projections = 2 * (hidden * heads * head_dim * 2 + 2 * hidden * kv * head_dim)
    scores = 4 * heads * head_dim * (length + 1) // 2
    mlp = 2 * 3 * hidden * intermediate
    theirs = flops.token_flops(src, config, length=length)
    assert theirs.matmul == layers * (projections + mlp)  # no embedding, no LM head, no norm
    assert theirs.attention == layers * scores
    # The release: in_proj (2 I H) and Θ (H (S (N+1) + I - S)) instead of gate, up, down.
    spec = json.loads((uniform_release / "config.json").read_text())["unswift"]["layers"]
    ours = flops.token_flops(rel, config, length=length)
    expected = sum(projections + 2 * hidden * (2 * intermediate + 7 * layer["expanded"] + intermediate
                                                - layer["expanded"])
                   for layer in spec)
    assert ours.matmul == expected
    assert ours.attention == theirs.attention
    assert flops.predicted_prefill_slowdown(rel, src, config, length=length) == pytest.approx(
        ours.total / theirs.total)
    assert ours.total > theirs.total


def test_sizer_predicts_the_release_it_will_write(tiny_llama, uniform_release, tiny_release):
    source = open_checkpoint(tiny_llama)
    sizer = sizing.ReleaseSizer(source, dtype="float32")
    layers = json.loads((uniform_release / "config.json").read_text())["unswift"]["layers"]
    planned = sizer.tensors(6, [layer["expanded"] for layer in layers])
    written = folder_tensors(uniform_release)
    assert {name: spec.shape for name, spec in planned.items()} == {name: spec.shape for name, spec in written.items()}
    # Order allocation (order 8, boost) keeps the bytes of a uniform order 8 up to rounding.
    boosted = folder_tensors(tiny_release)
    uniform8 = sizer.tensors(8, [layer["expanded"] for layer in
                                 json.loads((tiny_release / "config.json").read_text())["unswift"]["layers"]])
    assert sizing.weight_bytes(boosted) == pytest.approx(sizing.weight_bytes(uniform8), rel=0.01)


def test_memory_needed_has_every_dtype(tiny_llama):
    source = open_checkpoint(tiny_llama)
    tensors = folder_tensors(tiny_llama)
    memory = sizing.memory_needed(tensors, source.config, context=64)
    assert set(memory) == {"float32", "bfloat16", "float16"}
    assert memory["float32"]["weights_bytes"] == 2 * memory["bfloat16"]["weights_bytes"]


def test_bench_json_fields_and_record(tiny_llama, uniform_release, tmp_path):
    import shutil

    release = tmp_path / "release"
    shutil.copytree(uniform_release, release)
    args = ["bench", str(release), "--reference", str(tiny_llama), "--device", "cpu", "--batch", "1", "--batch", "2",
            "--context", "16", "--steps", "2", "--prefill-tokens", "8", "--json", "--quiet"]
    result = CliRunner().invoke(cli, [*args, "--record"])
    assert result.exit_code == 0, result.output
    report = _json(result)
    for name in ("decode_slowdown", "prefill_slowdown", "predicted_decode_slowdown", "predicted_prefill_slowdown",
                 "prefill_overhead", "flops_per_token", "device", "dtype", "batch",
                 "context", "loader_overhead", "hardware", "threads", "entries"):
        assert name in report, name
    assert report["batch"] == 1 and report["device"] == "cpu" and report["dtype"] == "float32"
    assert [entry["batch"] for entry in report["entries"]] == [1, 2]
    assert report["predicted_decode_slowdown"] > 1.0
    assert report["predicted_prefill_slowdown"] > 1.0
    measured, predicted = report["prefill_slowdown"], report["predicted_prefill_slowdown"]
    assert report["prefill_overhead"] == pytest.approx(measured / predicted)
    assert report["flops_per_token"]["release"] > report["flops_per_token"]["reference"]
    # A second --record replaces the entries of the same (device, dtype, batch) and keeps the others.
    again = CliRunner().invoke(cli, [*args[:6], "--batch", "2", *args[10:], "--record"])
    assert again.exit_code == 0, again.output
    entries = json.loads((release / "unswift.json").read_text())["bench"]
    assert sorted((e["device"], e["dtype"], e["batch"]) for e in entries) == [("cpu", "float32", 1),
                                                                                ("cpu", "float32", 2)]


def test_merge_entries_keeps_one_per_device_dtype_batch():
    from packager.stages.bench import merge_entries

    old = [{"device": "cpu", "dtype": "float32", "batch": 1, "v": 1}, {"device": "cuda", "dtype": "bfloat16",
                                                                        "batch": 1, "v": 2}]
    new = [{"device": "cpu", "dtype": "float32", "batch": 1, "v": 3}]
    merged = merge_entries(old, new)
    assert len(merged) == 2 and {e["v"] for e in merged} == {2, 3}


def test_bench_refuses_a_missing_device_and_a_non_release(tiny_llama, tmp_path):
    result = CliRunner().invoke(cli, ["bench", str(tmp_path), "--reference", str(tiny_llama), "--json"])
    assert result.exit_code == 2 and "unswift.json" in _json(result)["error"]


def test_dry_run_writes_nothing(tiny_llama, tmp_path):
    out = tmp_path / "release"
    result = CliRunner().invoke(cli, ["convert", str(tiny_llama), "--out", str(out), "--coverage", "0.5",
                                      "--order", "6", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    plan = _json(result)
    assert plan["dry_run"] is True and plan["order"] == 6 and plan["coverage"] == pytest.approx(0.5)
    assert set(plan["memory"]) == {"float32", "bfloat16", "float16"}
    assert plan["release_bytes"] > plan["source_bytes"] and plan["predicted_decode_slowdown"] > 1
    assert list(tmp_path.iterdir()) == []  # no folder, no secret file, no staging leftovers
    auto = _json(CliRunner().invoke(cli, ["convert", str(tiny_llama), "--out", str(out), "--dry-run", "--json"]))
    assert auto["coverage"] == "auto" and len(auto["candidates"]) > 1
    assert list(tmp_path.iterdir()) == []


def test_slowdown_dry_run_and_conflicts(tiny_llama, tmp_path):
    plan = _json(CliRunner().invoke(cli, ["convert", str(tiny_llama), "--out", str(tmp_path / "r"), "--slowdown",
                                          "4", "--dry-run", "--json"]))
    assert plan["slowdown"]["requested"] == 4.0 and plan["slowdown"]["padding_ceiling"] is None  # no --stats
    assert plan["predicted_decode_slowdown"] >= 4.0  # the bytes model's first uniform order that reaches it
    for extra in (["--order", "6"], ["--coverage", "0.5"]):
        result = CliRunner().invoke(cli, ["convert", str(tiny_llama), "--slowdown", "4", *extra, "--dry-run",
                                          "--json"])
        assert result.exit_code == 2 and "--slowdown chooses" in _json(result)["error"]
    beyond = CliRunner().invoke(cli, ["convert", str(tiny_llama), "--slowdown", "60", "--dry-run", "--json"])
    assert beyond.exit_code == 2 and "beyond this model" in _json(beyond)["error"]
    assert list(tmp_path.iterdir()) == []


# -- conversion at scale --------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt_neox"])
def test_layer_by_layer_calibration_equals_the_whole_model_with_hooks(family, tmp_path):
    import torch
    from support.tiny import build_tiny

    from packager.stages import calibrate
    from packager.stages.text import TokenText

    source = open_checkpoint(build_tiny(family, tmp_path / family))
    assert calibrate._layerwise_supported(source)
    ids = torch.randint(3, source.config.vocab_size, (10, 48), generator=torch.Generator().manual_seed(0))
    text = TokenText(ids, "random", "digest")
    layerwise = calibrate.gather(source, text)  # reads one decoder layer at a time
    hooked = calibrate.gather(source, text, model=source.load_model(torch.float32))
    for a, b in zip(layerwise.layers, hooked.layers, strict=True):
        for name in ("min", "max", "mean", "std", "up_rms", "counts"):
            assert torch.allclose(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-6), name
    assert layerwise.heldout_outside_fraction == pytest.approx(hooked.heldout_outside_fraction)


def test_mixture_of_experts_files_are_calibrated_through_the_whole_model(tmp_path):
    from support.tiny import build_tiny

    from packager.stages import calibrate

    assert not calibrate._layerwise_supported(open_checkpoint(build_tiny("mixtral", tmp_path / "mixtral")))


@pytest.mark.parametrize("boosted", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_release_dtype_transform_equals_the_float64_one(tiny_llama, tiny_llama_stats, boosted, dtype):
    """The converter builds Θ in place in the release dtype (float32 products); the float64 reference
    path (used to measure fidelity in memory) gives the same tensors to the rounding of that dtype."""
    import torch

    from packager.dtypes import RUNTIME
    from packager.formats.stats import Stats
    from packager.maths.transform import select_channels
    from packager.stages.options import ConvertOptions
    from packager.stages.plan.fits import plan_layers
    from packager.stages.tensors import layer_tensors

    source = open_checkpoint(tiny_llama)
    options = ConvertOptions(order=6, coverage=0.8, allocation="boost" if boosted else "uniform")
    plans = plan_layers(source, Stats.load(tiny_llama_stats), options)
    masks = select_channels(plans, 0.8, options.fit)
    generator = torch.Generator().manual_seed(0)
    boosts = [m & (torch.rand(m.shape, generator=generator) < 0.2) for m in masks] if boosted else None
    # float32: the float64 factor's rounding and the product's; bfloat16: one rounding of a float32 product.
    resolution = {"float32": 2**-23, "bfloat16": 2**-8}[dtype]
    for index in range(len(plans)):
        exact = layer_tensors(source, plans, masks, options, b"k" * 32, index, boosts)
        cast = layer_tensors(source, plans, masks, options, b"k" * 32, index, boosts, dtype=RUNTIME[dtype])
        assert set(cast) == set(exact)
        for name, tensor in exact.items():
            assert cast[name].dtype == RUNTIME[dtype] and cast[name].shape == tensor.shape
            error = (cast[name].double() - tensor).abs()
            assert bool((error <= (1 + 1e-3) * resolution * tensor.abs() + 1e-30).all()), name


def test_release_dry_run_plans_without_key_repo_or_folder(tiny_llama, tmp_path):
    out = tmp_path / "rel"
    result = CliRunner().invoke(cli, ["release", str(tiny_llama), "--out", str(out), "--slowdown", "3",
                                      "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    planned = _json(result)
    assert planned["dry_run"] is True and planned["slowdown"]["requested"] == 3.0
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_calibration_through_accelerate_device_map_equals_layer_by_layer(tmp_path):
    """`--device auto` loads the whole model with accelerate's device_map (here every layer lands on the
    CPU: no GPU) and gathers with hooks; its statistics equal the layer-by-layer ones."""
    import torch
    from support.tiny import build_tiny

    from packager.stages import calibrate
    from packager.stages.text import TokenText

    source = open_checkpoint(build_tiny("qwen2", tmp_path / "qwen2"))
    ids = torch.randint(3, source.config.vocab_size, (6, 40), generator=torch.Generator().manual_seed(1))
    text = TokenText(ids, "random", "digest")
    spread = calibrate.gather(source, text, device="auto")
    layerwise = calibrate.gather(source, text)
    for a, b in zip(spread.layers, layerwise.layers, strict=True):
        for name in ("min", "max", "mean", "std", "up_rms", "counts"):
            assert torch.allclose(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-6), name


def test_slowdown_falls_back_to_the_bytes_model_when_timing_would_not_fit(tiny_llama, tiny_llama_stats,
                                                                          monkeypatch):
    """A publishing machine without room for the release beside the model: no timing is attempted, the
    choice rests on the bytes model, and the record says so (`--slowdown` measures after truncation
    otherwise: tests/unit/stages/test_slowdown.py)."""
    from packager.formats.stats import Stats
    from packager.stages.options import ConvertOptions
    from packager.stages.plan import measure
    from packager.stages.plan import slowdown as autoslowdown

    source = open_checkpoint(tiny_llama)
    monkeypatch.setattr(measure, "available_memory", lambda device: 1024)  # 1 KB free
    choice = autoslowdown.choose_slowdown(source, source.load_model(), Stats.load(tiny_llama_stats),
                                          ConvertOptions(slowdown=1.5))
    assert choice.measured is None and choice.largest_measured is False
    assert choice.timings and all(t["measured"] is None for t in choice.timings)
    assert "bytes model" in choice.note and "timing modules need" in choice.note
    assert choice.predicted == pytest.approx(1.5, rel=0.10)
    assert choice.fidelity is not None  # fidelity needs no (N+1)-fold matrix: still measured


def _bytes_machine(contenders, **_):
    """A deterministic machine: a decode step takes as long as reading every parameter the model holds."""
    times = []
    for contender in contenders:
        contender.enter()
        times.append(sum(p.numel() * p.element_size() for p in contender.model.parameters()) * 1e-9)
    return times


def _limited_memory(monkeypatch, measure, layers_per_room: float) -> list[int]:
    """Memory for `layers_per_room` of the largest layer's timing modules; returns how many layers each
    build made (the test checks that no more than fit were ever held)."""
    sizes: dict[str, int] = {}
    real_bytes, real_modules, built = measure.unit_timing_bytes, measure._timing_modules, []

    def spy(*args, **kwargs):
        per_unit = real_bytes(*args, **kwargs)
        sizes["largest"] = max(per_unit)
        return per_unit

    def counted(*args, **kwargs):
        modules = real_modules(*args, **kwargs)
        built.append(sum(m is not None for m in modules))
        return modules

    monkeypatch.setattr(measure, "unit_timing_bytes", spy)
    monkeypatch.setattr(measure, "_timing_modules", counted)
    monkeypatch.setattr(measure, "available_memory",
                        lambda device: int(sizes["largest"] * layers_per_room / measure.ROOM_SHARE))
    return built


def test_timing_layer_by_layer_adds_up_to_timing_the_whole_candidate(tiny_llama, monkeypatch):
    from packager.maths.sizing import ReleaseSizer
    from packager.stages.plan import measure

    monkeypatch.setattr(measure, "measure_decode", _bytes_machine)
    source = open_checkpoint(tiny_llama)
    model, sizer = source.load_model(), ReleaseSizer(source, dtype="float32")
    expanded = [unit.intermediate for unit in sizer.units]
    whole = measure.measure_slowdown(model, source, sizer, 8, expanded, context=64)
    built = _limited_memory(monkeypatch, measure, 1.2)
    needed, available = measure.timing_memory(model, sizer, 8, expanded)
    assert needed > measure.ROOM_SHARE * available  # the whole candidate does not fit
    chunked, chunks = measure.measure_slowdown_by_chunks(model, source, sizer, 8, expanded, context=64,
                                                         room=int(measure.ROOM_SHARE * available))
    assert chunks == len(sizer.units) == 2 and max(built) == 1
    assert whole > 1.5 and chunked == pytest.approx(whole, rel=1e-9)
    assert all(type(layer.mlp).__name__ != "TaylorMLP" for layer in model.model.layers)  # source put back
    with pytest.raises(measure.NoRoom, match="layer 0"):
        measure.measure_slowdown_by_chunks(model, source, sizer, 8, expanded, context=64, room=1024)


def test_slowdown_is_timed_layer_by_layer_when_the_whole_candidate_would_not_fit(tiny_llama, tiny_llama_stats,
                                                                                 monkeypatch):
    """A memory limit that holds one layer's timing modules but not two: every candidate is still timed
    (one chunk per layer), and the record says it was measured, not estimated."""
    from packager.formats.stats import Stats
    from packager.stages.options import ConvertOptions
    from packager.stages.plan import measure
    from packager.stages.plan import slowdown as autoslowdown

    monkeypatch.setattr(measure, "measure_decode", _bytes_machine)
    built = _limited_memory(monkeypatch, measure, 1.2)
    source = open_checkpoint(tiny_llama)
    choice = autoslowdown.choose_slowdown(source, source.load_model(), Stats.load(tiny_llama_stats),
                                          ConvertOptions(slowdown=1.5))
    assert choice.measured is not None and not (choice.note or "").startswith("not timed")
    assert choice.timings and all(t["measured"] is not None and t["chunks"] == 2 for t in choice.timings)
    assert built and max(built) == 1  # never more than one layer's modules at once


def test_slowdown_on_a_mixture_of_experts_is_refused_before_any_work(tmp_path):
    from support.tiny import build_tiny

    source = build_tiny("mixtral", tmp_path / "mixtral")
    out = tmp_path / "release"
    result = CliRunner().invoke(cli, ["convert", str(source), "--out", str(out), "--slowdown", "3", "--json"])
    assert result.exit_code == 2 and "mixture-of-experts" in _json(result)["error"]
    assert not out.exists() and not (tmp_path / "release.secret").exists()
