"""Convert round trips: tiny Llama-family checkpoints -> release -> fresh-process trust_remote_code load."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from support.processes import run_python
from support.tiny import build_tiny

from packager import api
from packager.cli import cli
from packager.stages.options import ConvertOptions

# A release is judged by its logits against the source's on random token ids, in a fresh process.
KL_TOLERANCE = 1e-4  # nats/token, fp32, order 8, full coverage, default fit
MAX_LOGIT_TOLERANCE = 0.1

COMPARE = r"""
import json, sys, torch
from transformers import AutoModel, AutoModelForCausalLM
results = {}
for source, release in zip(sys.argv[1::2], sys.argv[2::2]):
    ref = AutoModelForCausalLM.from_pretrained(source).eval()
    rel = AutoModelForCausalLM.from_pretrained(release, trust_remote_code=True).eval()
    ids = torch.randint(0, ref.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ref(ids).logits.log_softmax(-1), rel(ids).logits.log_softmax(-1)
    generated = rel.generate(ids[:1, :6], max_new_tokens=8, do_sample=False)
    base = AutoModel.from_pretrained(release, trust_remote_code=True)
    results[release] = {
        "kl": float((a.exp() * (a - b)).sum(-1).mean()), "max_logit": float((a - b).abs().max()),
        "top1": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
        "generated": generated.shape[1], "class": type(rel).__name__, "base_class": type(base).__name__,
    }
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def family_releases(tmp_path_factory, tiny_llama, tiny_release):
    pairs = [(tiny_llama, tiny_release)]
    for family in ("mistral", "qwen2"):
        root = tmp_path_factory.mktemp(family)
        source = build_tiny(family, root / "src")
        stats = api.calibrate(source, tokens=1024)
        api.convert(source, root / "rel", stats=stats, options=ConvertOptions(order=8, coverage=1.0))
        pairs.append((source, root / "rel"))
    return pairs


def test_releases_load_in_a_fresh_process_and_match_the_source(family_releases):
    args = [str(p) for pair in family_releases for p in pair]
    done = run_python(COMPARE, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for release, result in results.items():
        assert result["kl"] < KL_TOLERANCE, (release, result)
        assert result["max_logit"] < MAX_LOGIT_TOLERANCE, (release, result)
        assert result["generated"] == 6 + 8
        assert result["class"].startswith("Unswift") and result["class"].endswith("ForCausalLM")
        assert result["base_class"].startswith("Unswift") and result["base_class"].endswith("Model")


def _all_tensors(folder):
    tensors = {}
    for file in folder.glob("*.safetensors"):
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    return tensors


def test_release_holds_no_original_mlp_tensor(tiny_llama, tiny_release):
    source, release = _all_tensors(tiny_llama), _all_tensors(tiny_release)
    assert not [k for k in release if k.endswith(("gate_proj.weight", "up_proj.weight", "down_proj.weight"))]
    for layer in range(2):
        down = source[f"model.layers.{layer}.mlp.down_proj.weight"]
        gate = source[f"model.layers.{layer}.mlp.gate_proj.weight"]
        theta = release[f"model.layers.{layer}.mlp.theta"]
        in_proj = release[f"model.layers.{layer}.mlp.in_proj.weight"]
        # No column of theta equals a down column, up to sign; no gate row appears as it is.
        for column in down.T:
            assert not torch.isclose(theta.abs(), column.abs().unsqueeze(-1), rtol=0, atol=0).all(0).any()
        for row in gate:
            assert not (in_proj == row).all(1).any() and not (in_proj == -row).all(1).any()


def test_config_records_the_transform(tiny_release):
    config = json.loads((tiny_release / "config.json").read_text())
    spec = config["unswift"]
    assert config["model_type"] == "unswift_llama"
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    assert spec["format_version"] == 1 and spec["order"] == 8 and spec["coverage"] == 1.0
    assert spec["requested_coverage"] == 1.0 and spec["fit"] == "weighted"
    assert all(layer["expanded"] == layer["intermediate"] == 128 for layer in spec["layers"])
    record = json.loads((tiny_release / "unswift.json").read_text())
    assert record["transform"] == spec
    assert "/" not in record["source"]["name"] and str(tiny_release.parent) not in json.dumps(record)
    assert set(record["payload"]) >= {"config.json", "model.safetensors", "modeling_unswift.py"}


def test_partial_coverage_keeps_plaintext_channels_and_records_them(tiny_llama, tiny_llama_stats, tmp_path):
    out = tmp_path / "rel"
    api.convert(tiny_llama, out, stats=tiny_llama_stats, options=ConvertOptions(order=4, coverage=0.5))
    spec = json.loads((out / "config.json").read_text())["unswift"]
    assert spec["order"] == 4 and spec["coverage"] == pytest.approx(0.5, abs=1 / 256)
    with safe_open(out / "model.safetensors", framework="pt") as handle:
        theta = handle.get_slice("model.layers.0.mlp.theta").get_shape()
    expanded = spec["layers"][0]["expanded"]
    assert theta == [64, expanded * 5 + (128 - expanded)]


def test_load_without_trust_remote_code_fails_loudly(tiny_release):
    code = ("import sys; from transformers import AutoModelForCausalLM; "
            "AutoModelForCausalLM.from_pretrained(sys.argv[1])")
    done = run_python(code, str(tiny_release))
    assert done.returncode != 0 and "trust_remote_code" in done.stderr


def test_unknown_format_version_is_refused_with_the_needed_version(tiny_release, tmp_path):
    import shutil

    copy = tmp_path / "future"
    shutil.copytree(tiny_release, copy)
    config = json.loads((copy / "config.json").read_text())
    config["unswift"]["format_version"] = 99
    (copy / "config.json").write_text(json.dumps(config))
    code = ("import sys; from transformers import AutoModelForCausalLM; "
            "AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)")
    done = run_python(code, str(copy))
    assert done.returncode != 0 and "format_version 99" in done.stderr


def _convert(*args):
    return CliRunner().invoke(cli, ["convert", *args], catch_exceptions=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}", "--coverage", "1.0"], "not found"),
        (["{empty}", "--coverage", "1.0"], "no config.json"),
        (["{src}", "--order", "0", "--coverage", "1.0"], "--order 0 is out of range"),
        (["{src}", "--coverage", "1.5"], "in (0, 1]"),
        (["{src}", "--coverage", "0"], "in (0, 1]"),
        (["{src}", "--coverage", "1.0", "--calibration", "{empty_text}"], "is empty"),
        (["{src}", "--coverage", "1.0", "--stats", "{missing}"], "not found"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(args, message, tiny_llama, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty_text.txt").write_text("   \n")
    out = tmp_path / "out"
    names = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "src": tiny_llama,
             "empty_text": tmp_path / "empty_text.txt"}
    result = _convert(*[a.format(**names) for a in args], "--out", str(out), "--secret-file", __file__)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()
    assert "Traceback" not in result.output


def test_unsupported_architecture_exits_2_naming_the_supported_ones(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    result = _convert(str(folder), "--out", str(tmp_path / "out"), "--coverage", "1.0")
    assert result.exit_code == 2 and "LlamaForCausalLM" in result.output and "BertForMaskedLM" in result.output


def test_existing_output_needs_overwrite(tiny_llama, tiny_llama_stats, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _convert(str(tiny_llama), "--out", str(out), "--stats", str(tiny_llama_stats), "--coverage", "1.0")
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (out / "keep.txt").read_text() == "mine"


def test_json_failure_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["convert", str(tmp_path / "nope"), "--json"])
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1
    payload = json.loads(lines[0])
    assert payload["command"] == "convert" and payload["ok"] is False and "not found" in payload["error"]


def test_new_secret_lands_next_to_the_release_with_mode_0600(tiny_llama, tiny_llama_stats, tmp_path):
    out = tmp_path / "rel"
    result = CliRunner().invoke(cli, ["convert", str(tiny_llama), "--out", str(out), "--stats",
                                      str(tiny_llama_stats), "--coverage", "1.0", "--json"])
    assert result.exit_code == 0, result.output
    secret = tmp_path / "rel.secret"
    assert secret.is_file() and (secret.stat().st_mode & 0o777) == 0o600
    value = secret.read_text().strip()
    for file in out.iterdir():
        assert value not in file.read_bytes().decode(errors="ignore")
    assert value not in result.output


def test_order_allocation_on_heavy_tailed_channels_keeps_the_bytes_and_loads(tmp_path):
    source = build_tiny("llama", tmp_path / "src", gate_scale=1.5, wide_channels=8)
    stats = api.calibrate(source, tokens=1024)
    results = {}
    for allocation in ("boost", "uniform"):
        result, _ = api.convert(source, tmp_path / allocation, stats=stats,
                                options=ConvertOptions(order=6, coverage=1.0, allocation=allocation))
        results[allocation] = result
    boost, uniform = results["boost"].spec, results["uniform"].spec
    assert boost["allocation"]["kind"] == "boost" and uniform["allocation"]["kind"] == "uniform"
    assert boost["allocation"]["columns_per_expanded_channel"] == pytest.approx(7.0, abs=0.05)
    groups = boost["layers"][0]["groups"]
    # base order 5 and boost order 12, each channel cut below where its terms stop carrying anything
    # (docs/FORMAT.md#no-padding): the boosted channels keep 12, the others at most 5
    orders = [g["order"] for g in groups]
    assert orders[-1] == 12 and all(o <= 5 for o in orders[:-1]) and sum(g["channels"] for g in groups) == 128
    # Same bytes (up to the rounding of the boosted count), in a fresh process the same function.
    sizes = results["boost"].release_bytes, results["uniform"].release_bytes
    assert abs(sizes[0] - sizes[1]) < 0.01 * sizes[1]
    done = run_python(COMPARE, str(source), str(tmp_path / "boost"), str(source), str(tmp_path / "uniform"))
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured[str(tmp_path / "boost")]["kl"] < KL_TOLERANCE
    assert measured[str(tmp_path / "boost")]["kl"] < measured[str(tmp_path / "uniform")]["kl"]


ROUND_TRIP = r"""
import json, sys, tempfile, torch
from safetensors import safe_open
from transformers import AutoModel, AutoModelForCausalLM
out = {}
for release in sys.argv[1:]:
    model = AutoModelForCausalLM.from_pretrained(release, trust_remote_code=True).eval()
    ids = torch.randint(0, 200, (1, 12), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        with safe_open(f"{folder}/model.safetensors", "pt") as saved, \
                safe_open(f"{release}/model.safetensors", "pt") as original:
            same_names = sorted(saved.keys()) == sorted(original.keys())
        again = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            same_logits = torch.equal(model(ids).logits, again(ids).logits)
    AutoModel.from_pretrained(release, trust_remote_code=True)
    out[release] = {"same_names": same_names, "same_logits": same_logits}
print(json.dumps(out))
"""


def test_save_pretrained_writes_the_release_names_back(tiny_release, tmp_path):
    # Θ and the down bias live in an nn.Linear (`theta.weight`, `theta.bias`); the files keep format 1's names.
    source = build_tiny("phi", tmp_path / "phi-src")  # a family with a down-projection bias
    api.convert(source, tmp_path / "phi", stats=api.calibrate(source, tokens=512),
                options=ConvertOptions(order=4, coverage=1.0))
    done = run_python(ROUND_TRIP, str(tiny_release), str(tmp_path / "phi"))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(r == {"same_names": True, "same_logits": True} for r in results.values()), results
    assert "LOAD REPORT" not in done.stdout + done.stderr  # the base model leaves lm_head out silently
