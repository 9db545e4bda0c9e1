"""Fingerprinted releases and `unswift trace` end to end on a tiny Llama, for every suspect format.

Three recipients (alice, bob, carol) get their own release of one tiny Llama (order 8, coverage 1.0,
the package's default profile: kfac, KL budget 3e-7, ceiling 1 % of row RMS). Thresholds, as in
benchmarks/fingerprint_robustness.py: the right recipient at Šidák-corrected p ≤ 1e-9 (exit 0), every
other recipient at corrected p > 1e-3; the source itself: nobody (exit 1). Bad input: exit 2, nothing
written. The reparametrisations themselves are covered one by one in tests/unit/maths/test_fingerprint.py;
here they reach trace through files.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from support import launder
from support.gguf_files import write_gguf
from support.hub_double import DEFAULT_TOKEN
from support.processes import run_python

from packager import api
from packager.cli import cli
from packager.maths.fingerprint.alignment import Geometry
from packager.publish import signing
from packager.stages.options import ConvertOptions

RECIPIENTS = ("alice", "bob", "carol")


@pytest.fixture(scope="module")
def issued(tiny_llama, tiny_llama_stats, tmp_path_factory):
    root = tmp_path_factory.mktemp("issued")
    ledger = root / "ledger.jsonl"
    for name in RECIPIENTS:
        api.convert(tiny_llama, root / name, stats=tiny_llama_stats, options=ConvertOptions(order=8, coverage=1.0),
                    recipient=name, ledger=ledger, eval_tokens=256, calibration_tokens=1024)
    return root, ledger


def _trace(suspect, tiny_llama, ledger, *extra):
    result = CliRunner().invoke(cli, ["trace", str(suspect), "--reference", str(tiny_llama), "--ledger", str(ledger),
                                      "--json", *extra])
    return result, json.loads(result.stdout.strip().splitlines()[-1])


def _check(fields, guilty):
    by_name = {r["name"]: r for r in fields["recipients"]}
    assert sorted(by_name) == sorted(RECIPIENTS)
    for name in RECIPIENTS:
        if name in guilty:
            assert by_name[name]["log10_p_value"] <= -9, fields
        else:
            assert by_name[name]["log10_p_value"] > -3, fields
    assert fields["identified_all"] == [g for g in fields["identified_all"] if g in guilty]
    assert sorted(fields["identified_all"]) == sorted(guilty)


def test_release_names_no_recipient_and_the_ledger_no_secret(issued):
    root, ledger = issued
    secret = (ledger.with_name("ledger.secret")).read_text().strip()
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [e["recipient"] for e in entries] == list(RECIPIENTS)
    assert secret not in ledger.read_text()
    ids = {e["secret_id"] for e in entries}
    assert len(ids) == 3  # every recipient has its own hardening secret
    for name in RECIPIENTS:
        for file in (root / name).rglob("*"):
            if file.is_file():
                data = file.read_bytes()
                assert name.encode() not in data and secret.encode() not in data, file
        record = json.loads((root / name / "unswift.json").read_text())
        fingerprint = record["fingerprint"]
        assert fingerprint["scheme"] == "unswift-fingerprint-v1" and fingerprint["source_fidelity"]["tokens"] > 0
        assert fingerprint["source_fidelity"]["kl"] < 1e-4


@pytest.mark.parametrize("name", RECIPIENTS)
def test_release_folder_names_its_recipient(issued, tiny_llama, name):
    root, ledger = issued
    result, fields = _trace(root / name, tiny_llama, ledger)
    assert result.exit_code == 0, result.output
    assert fields["identified"] == name and fields["suspect_format"] == "release"
    assert fields["derived_from_reference"] is True and fields["release_secret_id_matches"] == name
    _check(fields, [name])


def test_release_with_its_unswift_section_stripped(issued, tiny_llama, tmp_path):
    root, ledger = issued
    copy = shutil.copytree(root / "bob", tmp_path / "edited")
    config = json.loads((copy / "config.json").read_text())
    config["unswift"]["hardening"].pop("secret_id")
    config["unswift"].pop("calibration")
    (copy / "config.json").write_text(json.dumps(config))
    (copy / "unswift.json").unlink()
    result, fields = _trace(copy, tiny_llama, ledger)
    assert result.exit_code == 0, result.output
    assert fields["release_secret_id_matches"] is None
    _check(fields, ["bob"])


@pytest.fixture(scope="module")
def rebuilt(issued, tiny_llama, tmp_path_factory):
    """alice's release as the strongest attack rebuilds it: a plain transformers checkpoint."""
    root, _ = issued
    out = tmp_path_factory.mktemp("rebuilt") / "alice"
    report = api.audit(root / "alice", reference=tiny_llama, attacks=("kerckhoffs",), export_rebuilt=out)
    assert any("kerckhoffs" in note for note in report.notes)
    return out


LOAD_PLAIN = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM
ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
a = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=False).eval()
b = AutoModelForCausalLM.from_pretrained(sys.argv[2]).eval()
with torch.no_grad():
    agree = (a(input_ids=ids).logits.argmax(-1) == b(input_ids=ids).logits.argmax(-1)).double().mean()
print(json.dumps({"type": type(a).__name__, "top1": float(agree),
                  "remote": any(f.endswith(".py") for f in __import__("os").listdir(sys.argv[1]))}))
"""


def test_export_rebuilt_loads_without_remote_code(rebuilt, tiny_llama):
    done = run_python(LOAD_PLAIN, str(rebuilt), str(tiny_llama))
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["type"] == "LlamaForCausalLM" and out["remote"] is False
    assert out["top1"] >= 0.9  # the rebuilt model computes (nearly) the source's function


def _state(folder):
    return load_file(str(folder / "model.safetensors"))


def _folder(state, like, out, *, untied=False):
    out.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
    config = json.loads((like / "config.json").read_text())
    config["tie_word_embeddings"] = config.get("tie_word_embeddings", False) and not untied
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_rebuilt_plain_folder(rebuilt, issued, tiny_llama):
    result, fields = _trace(rebuilt, tiny_llama, issued[1])
    assert result.exit_code == 0, result.output
    assert fields["suspect_format"] == "safetensors"
    _check(fields, ["alice"])


def test_rebuilt_and_every_reparametrisation(rebuilt, issued, tiny_llama, tmp_path):
    state = _state(rebuilt)
    state.setdefault("lm_head.weight", state["model.embed_tokens.weight"].clone())
    from transformers import AutoConfig

    geometry = Geometry.from_config(AutoConfig.from_pretrained(tiny_llama))
    laundered = launder.random_laundering(state, geometry, torch.Generator().manual_seed(5))
    folder = _folder(laundered, rebuilt, tmp_path / "laundered", untied=True)
    result, fields = _trace(folder, tiny_llama, issued[1])
    assert result.exit_code == 0, result.output
    _check(fields, ["alice"])
    aligned = fields["aligned"]
    assert aligned["residual_rotation"] and aligned["mlp_permutation"] and aligned["value_output_mixing"]


def test_rebuilt_as_a_gguf_file(rebuilt, issued, tiny_llama, tmp_path):
    state = _state(rebuilt)
    path = write_gguf(state, tmp_path / "leak.Q8_0.gguf", heads=4, kv_heads=2, quant="Q8_0")
    result, fields = _trace(path, tiny_llama, issued[1])
    assert result.exit_code == 0, result.output
    assert fields["suspect_format"] == "gguf"
    _check(fields, ["alice"])


def test_average_of_two_rebuilt_copies_names_both(issued, tiny_llama, rebuilt, tmp_path):
    root, ledger = issued
    other = tmp_path / "bob-rebuilt"
    api.audit(root / "bob", reference=tiny_llama, attacks=("kerckhoffs",), export_rebuilt=other)
    mixed = launder.average([_state(rebuilt), _state(other)])
    result, fields = _trace(_folder(mixed, rebuilt, tmp_path / "avg"), tiny_llama, ledger)
    assert result.exit_code == 0, result.output
    _check(fields, ["alice", "bob"])


def test_the_source_itself_names_nobody(issued, tiny_llama):
    result, fields = _trace(tiny_llama, tiny_llama, issued[1])
    assert result.exit_code == 1, result.output
    assert fields["ok"] is False and fields["identified"] is None and fields["derived_from_reference"] is True
    _check(fields, [])


def test_bad_input_exits_2_and_writes_nothing(issued, tiny_llama, tmp_path):
    _, ledger = issued
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    blob = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 40]}}).encode()
    (hostile / "model.safetensors").write_bytes(len(blob).to_bytes(8, "little") + blob + bytes(16))
    before = sorted(ledger.parent.rglob("*"))
    result, fields = _trace(hostile, tiny_llama, ledger)
    assert result.exit_code == 2 and "malformed" in fields["error"]
    truncated = tmp_path / "t.gguf"
    truncated.write_bytes(b"GGUF" + bytes(10))
    result, _ = _trace(truncated, tiny_llama, ledger)
    assert result.exit_code == 2
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")  # never unpickled
    result, fields = _trace(pickled, tiny_llama, ledger)
    assert result.exit_code == 2 and "pickled" in fields["error"]
    result, _ = _trace(tiny_llama, tiny_llama, ledger, "--secret-file", str(tmp_path / "missing"))
    assert result.exit_code == 2
    assert sorted(ledger.parent.rglob("*")) == before  # the ledger, its secret and profiles untouched
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["hostile", "model.safetensors", "t.gguf", "pickled", "pytorch_model.bin"])


def test_unsupported_family_is_refused_naming_the_supported(tmp_path, tiny_llama_stats):
    from support.tiny import build_tiny

    phi = build_tiny("phi", tmp_path / "phi")
    result = CliRunner().invoke(cli, ["convert", str(phi), "--out", str(tmp_path / "r"), "--recipient", "x",
                                      "--ledger", str(tmp_path / "l.jsonl"), "--json"])
    assert result.exit_code == 2 and "llama, mistral, qwen2, qwen3" in result.output
    assert not (tmp_path / "r").exists() and not (tmp_path / "l.jsonl").exists()
    result = CliRunner().invoke(cli, ["trace", str(phi), "--reference", str(phi), "--ledger",
                                      str(tmp_path / "l.jsonl"), "--json"])
    assert result.exit_code == 2 and "not supported" in result.output


def test_release_recipients_pushes_one_commit_each_and_trace_names_the_repo(
        hub_double, tiny_llama, tiny_llama_stats, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", DEFAULT_TOKEN)
    key = signing.generate_key(tmp_path / "publisher.pem")
    listing = tmp_path / "partners.txt"
    listing.write_text("# name repo\nacme org/acme-model\nglobex org/globex-model\n")
    ledger = tmp_path / "ledger.jsonl"
    result = CliRunner().invoke(cli, [
        "release", str(tiny_llama), "--recipients", str(listing), "--ledger", str(ledger), "--key",
        str(key.private_key), "--endpoint", hub_double.url, "--no-xet", "--out", str(tmp_path / "out"),
        "--order", "4", "--coverage", "1.0", "--stats", str(tiny_llama_stats), "--eval-tokens", "256",
        "--calibration-tokens", "1024", "--no-bench", "--no-audit", "--json"])
    assert result.exit_code == 0, result.output
    releases = json.loads(result.stdout.strip().splitlines()[-1])["releases"]
    assert [r["repo"] for r in releases] == ["org/acme-model", "org/globex-model"]
    for repo_id in ("org/acme-model", "org/globex-model"):
        assert [c.title for c in hub_double.repo(repo_id).history()][1:] == ["initial commit"]
    events = [(e["event"], e["recipient"]) for e in map(json.loads, ledger.read_text().splitlines())]
    assert events == [("issued", "acme"), ("pushed", "acme"), ("issued", "globex"), ("pushed", "globex")]
    pushed = [json.loads(line) for line in ledger.read_text().splitlines() if '"pushed"' in line]
    assert pushed[1]["repo"] == "org/globex-model" and pushed[1]["revision"] == releases[1]["revision"]
    traced, fields = _trace("org/globex-model", tiny_llama, ledger, "--endpoint", hub_double.url)
    assert traced.exit_code == 0, traced.output
    assert fields["identified"] == "globex" and fields["suspect"] == "org/globex-model@main"
    card_text = (tmp_path / "out" / "globex" / "README.md").read_text()
    assert "## Leak attribution" in card_text and "carries a recipient fingerprint" in card_text
    outside_repo_id = card_text.replace("org/globex-model", "").replace("./globex-model", "").lower()
    assert "globex" not in outside_repo_id and "acme" not in outside_repo_id  # never whose copy
