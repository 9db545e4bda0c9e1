"""`unswift release` end to end against the loopback Hub double, and the eval command on a tiny release."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from support.hub_double import DEFAULT_TOKEN
from support.processes import run_python

from packager.cli import cli
from packager.errors import CheckFailed, UsageError
from packager.publish import signing
from packager.release import PublishOptions, release
from packager.stages.options import ConvertOptions

GENERATE = r"""
import json, os, sys, torch
from transformers import AutoModelForCausalLM
ids = torch.tensor([[3, 17, 42, 99, 5, 71]])
out = {}
for name, where, revision in (("hub", sys.argv[1], sys.argv[2]), ("local", sys.argv[3], None)):
    model = AutoModelForCausalLM.from_pretrained(where, revision=revision, trust_remote_code=True)
    out[name] = model.generate(ids, max_new_tokens=12, do_sample=False)[0].tolist()
print(json.dumps(out))
"""


@pytest.fixture
def publisher_key(tmp_path):
    return signing.generate_key(tmp_path / "publisher.pem")


def _release(source, out, double, key, tag, **options):
    return release(
        source, out=out, options=ConvertOptions(order=4, coverage=1.0, **options), key=key.private_key,
        publish=PublishOptions(repo="org/tiny", tag=tag, endpoint=double.url, no_xet=True), eval_tokens=256,
        secret_file=None, overwrite=True, audit=False,
    )


def test_release_pushes_one_commit_that_loads_by_tag_and_verifies(hub_double, tiny_llama, tmp_path,
                                                                   publisher_key, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", DEFAULT_TOKEN)
    out = tmp_path / "rel"
    first = _release(tiny_llama, out, hub_double, publisher_key, "v1", max_shard_bytes=150_000)
    repo = hub_double.repo("org/tiny")
    local = {p.name for p in out.iterdir()}
    assert sum(name.startswith("model-0") for name in local) >= 2  # sharded
    remote = set(repo.files("v1"))
    assert remote == local | {".gitattributes"}
    assert first.fields["new_commit"] is True and repo.tags["v1"] == first.fields["revision"]
    assert [c.title for c in repo.history()][1:] == ["initial commit"]

    env = {"HF_ENDPOINT": hub_double.url, "HF_TOKEN": DEFAULT_TOKEN, "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_XET": "1"}
    done = run_python(GENERATE, "org/tiny", "v1", str(out), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    tokens = json.loads(done.stdout.strip().splitlines()[-1])
    assert tokens["hub"] == tokens["local"]

    verified = CliRunner().invoke(cli, ["verify", "org/tiny", "--revision", "v1", "--key",
                                        str(publisher_key.public_key), "--endpoint", hub_double.url, "--json"])
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.stdout.strip().splitlines()[-1])["verified"] is True

    # Re-running with the same inputs resumes: nothing converted again, no new commit.
    again = _release(tiny_llama, out, hub_double, publisher_key, "v1", max_shard_bytes=150_000)
    assert again.stages["convert"].startswith("skipped") and again.stages["eval"].startswith("skipped")
    assert again.stages["sign"].startswith("skipped") and again.fields["new_commit"] is False
    assert again.stages["bench"].startswith("skipped")
    bench_entries = json.loads((out / "unswift.json").read_text())["bench"]
    assert {entry["batch"] for entry in bench_entries} >= {1} and all("decode_slowdown" in e for e in bench_entries)

    # A second release with fewer shards leaves no stale shard in the repo.
    second = _release(tiny_llama, out, hub_double, publisher_key, "v2")
    assert second.fields["new_commit"] is True
    assert set(repo.files("v2")) == {p.name for p in out.iterdir()} | {".gitattributes"}
    assert not any(name.startswith("model-0") for name in repo.files("v2"))


def test_threshold_miss_stops_before_pushing(hub_double, tiny_llama, tmp_path, publisher_key, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", DEFAULT_TOKEN)
    with pytest.raises(CheckFailed, match="not pushed"):
        release(tiny_llama, out=tmp_path / "rel", options=ConvertOptions(order=1, coverage=1.0),
                key=publisher_key.private_key, min_top1=None, max_kl=0.0,
                publish=PublishOptions(repo="org/strict", endpoint=hub_double.url, no_xet=True),
                eval_tokens=256, bench=False, audit=False)
    assert "org/strict" not in hub_double.repos


def test_push_without_key_is_refused_before_any_work(tiny_llama, tmp_path):
    with pytest.raises(UsageError, match="must be signed"):
        release(tiny_llama, out=tmp_path / "rel", publish=PublishOptions(repo="org/x"))
    assert not (tmp_path / "rel").exists()


def test_release_cli_malformed_repo_exits_2(tiny_llama, tmp_path, publisher_key):
    result = CliRunner().invoke(cli, ["release", str(tiny_llama), "--repo", "not a repo", "--key",
                                      str(publisher_key.private_key), "--out", str(tmp_path / "r"), "--json"])
    assert result.exit_code == 2 and not (tmp_path / "r").exists()
    assert json.loads(result.stdout.strip().splitlines()[-1])["ok"] is False


def test_eval_cli_reports_contract_fields_and_thresholds(tiny_llama, tiny_release):
    args = ["eval", str(tiny_release), "--reference", str(tiny_llama), "--eval-tokens", "512", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    for field in ("top1_agreement", "kl_mean", "ppl_reference", "ppl_release", "greedy_match", "eval_tokens",
                  "coverage", "order", "noise_floor", "text_source", "calibration_overlap"):
        assert field in payload
    assert payload["greedy_match"] is None  # the tiny checkpoint has no tokenizer
    assert payload["eval_tokens"] >= 500 and payload["calibration_overlap"] is False
    assert payload["noise_floor"]["top1_agreement"] > 0.9
    strict = CliRunner().invoke(cli, [*args, "--max-kl", "0"])
    assert strict.exit_code == 1
    assert json.loads(strict.stdout.strip().splitlines()[-1])["ok"] is False


def test_a_local_release_names_its_repo_and_tag_and_card_keeps_its_signature(tiny_llama, tmp_path, publisher_key):
    """`release --no-push --repo org/name --tag v1`: the card's snippets name the repo and tag, every measured
    figure names its hardware, the recipe is a summary table; `card` twice keeps model.sig and verify passes."""
    from packager.devices import hardware_name

    out = tmp_path / "rel"
    args = ["release", str(tiny_llama), "--no-push", "--repo", "org/name", "--tag", "v1", "--key",
            str(publisher_key.private_key), "--out", str(out), "--order", "4", "--coverage", "1.0",
            "--eval-tokens", "256", "--calibration-tokens", "512", "--no-audit", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["stages"]["push"] == "skipped (--no-push)"
    assert json.loads((out / "unswift.json").read_text())["hub"] == {"repo": "org/name", "tag": "v1"}
    readme = (out / "README.md").read_text()
    assert "ORG/NAME" not in readme and '"TAG"' not in readme and "--revision TAG" not in readme
    assert 'repo, revision = "org/name", "v1"' in readme and "unswift verify org/name --revision v1" in readme
    hardware = hardware_name("cpu")
    fidelity = readme.split("## Fidelity, as measured\n", 1)[1].split("\n## ", 1)[0]
    slowdown = readme.split("## Slowdown, as measured\n", 1)[1].split("\n## ", 1)[0]
    assert f"Measured on {hardware}, cpu, float32" in fidelity and "| top-1 agreement" in fidelity
    assert f"Measured on {hardware}, cpu, float32" in slowdown and "| 1 |" in slowdown and "| 8 |" in slowdown
    assert "- Order: 4, " in readme  # the allocation sentence
    assert "```yaml" not in readme and "model.layers." not in readme
    recipe = readme.split("## How it was made\n", 1)[1].split("\n## ", 1)[0]
    assert len([line for line in recipe.splitlines() if line.startswith("|")]) <= 14

    signature = (out / "model.sig").read_bytes()
    for _ in range(2):
        again = CliRunner().invoke(cli, ["card", str(out), "--json"])
        assert again.exit_code == 0, again.output
        assert json.loads(again.stdout.strip().splitlines()[-1])["signature_removed"] is False
    assert (out / "model.sig").read_bytes() == signature and (out / "README.md").read_text() == readme
    verified = CliRunner().invoke(cli, ["verify", str(out), "--key", str(publisher_key.public_key)])
    assert verified.exit_code == 0, verified.output


def test_quick_budget_sizes_every_measurement_and_the_card_names_it(tiny_llama, tmp_path):
    out = tmp_path / "quick"
    report = release(tiny_llama, out=out, options=ConvertOptions(order=4, coverage=1.0),
                     publish=PublishOptions(repo="org/tiny", tag="v1", push=False), secret_file=None,
                     budget="quick", eval_tokens=512, audit=False)
    record = json.loads((out / "unswift.json").read_text())
    assert record["budget"]["name"] == "quick" and record["budget"]["bench_steps"] == 8
    assert record["calibration"]["tokens"] <= 4096  # the budget's, not the full 16,384
    assert record["eval"]["eval_tokens"] <= 512  # given explicitly: wins over the budget's 2,048
    assert {entry["steps"] for entry in record["bench"]} == {8}
    assert set(report.fields["stage_seconds"]) == set(report.stages)
    assert "- Budget: quick (4,096 calibration tokens" in (out / "README.md").read_text()
    with pytest.raises(UsageError, match="other inputs"):  # a quick folder never passes for a full one
        release(tiny_llama, out=out, options=ConvertOptions(order=4, coverage=1.0),
                publish=PublishOptions(repo="org/tiny", tag="v1", push=False), secret_file=None, audit=False)
