"""The protection audit on tiny models: each attack recovers what it should, hardening defeats the
published attack, the leak scan finds a planted leak, and the command keeps its JSON and exit codes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from support.tiny import build_tiny

from packager import api
from packager.cli import cli
from packager.errors import CheckFailed, UsageError
from packager.maths.transform import SCALE_EXCLUDED, Hardening, SourceMLP, build_layer, layer_generator
from packager.stages.audit import LearningBudget, audit
from packager.stages.options import ConvertOptions

SMALL = LearningBudget(steps=20, tokens=256)
SECRET = "audit-test-secret\n"


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A tiny Llama whose gate pre-activations span |g| ~ 3, like the demo model's (half-widths 1-5)."""
    return build_tiny("llama", tmp_path_factory.mktemp("audit-src") / "llama", gate_scale=3.0)


@pytest.fixture(scope="module")
def releases(tiny_llama, tmp_path_factory):
    """The release kinds the acceptance criteria name, all from one tiny Llama and one secret."""
    root = tmp_path_factory.mktemp("audit")
    secret = root / "secret"
    secret.write_text(SECRET)
    stats = api.calibrate(tiny_llama, tokens=1024)
    kinds = {
        "paper": ConvertOptions(order=6, coverage=0.7, fit="taylor", hardening=False),
        "taylor": ConvertOptions(order=6, coverage=0.7, fit="taylor"),
        "nohard": ConvertOptions(order=8, coverage=1.0, hardening=False),
        "default": ConvertOptions(order=8, coverage=1.0),
    }
    out = {"secret": secret}
    for name, options in kinds.items():
        api.convert(tiny_llama, root / name, stats=stats, options=options, secret_file=secret)
        out[name] = root / name
    return out


def _attack(report, name):
    return next(a for a in report.attacks if a.name == name)


def test_published_attack_recovers_a_paper_release(releases, tiny_llama):
    report = audit(releases["paper"], reference=tiny_llama, attacks=["coefficient_ratio"])
    attack = _attack(report, "coefficient_ratio")
    assert attack.recovered_fraction >= 0.99
    assert attack.relative_error < 1e-3
    assert attack.rebuilt_top1 >= 0.99 and attack.rebuilt_compared_with == "source"


def test_hardening_not_the_fit_defeats_the_published_attack(releases, tiny_llama):
    report = audit(releases["taylor"], reference=tiny_llama, attacks=["coefficient_ratio"])
    assert _attack(report, "coefficient_ratio").recovered_fraction < 0.01


def test_kerckhoffs_recovers_a_default_fit_release_without_hardening(releases, tiny_llama):
    report = audit(releases["nohard"], reference=tiny_llama, attacks=["kerckhoffs"])
    attack = _attack(report, "kerckhoffs")
    assert attack.recovered_fraction >= 0.99, attack
    assert attack.rebuilt_top1 >= 0.95


def test_kerckhoffs_with_attacker_data_refits_with_the_observed_histogram(releases, tiny_llama):
    report = audit(releases["nohard"], reference=tiny_llama, attacks=["kerckhoffs"], learning=SMALL,
                   kerckhoffs_data=True)
    data = _attack(report, "kerckhoffs").to_json()
    assert data["recovered_fraction"] >= 0.99 and data["matching"] == "observed density of released t"
    assert data["attacker_data"]["tokens"] > 0


def test_kerckhoffs_on_a_hardened_release_is_reported_as_measured(releases, tiny_llama):
    """The secret scale is a gauge: elements differ, the rebuilt function does not. Both are reported."""
    report = audit(releases["default"], reference=tiny_llama, attacks=["kerckhoffs"])
    attack = _attack(report, "kerckhoffs")
    assert attack.recovered_fraction < attack.recovered_fraction_up_to_scale
    assert attack.recovered_fraction_up_to_scale >= 0.9
    assert attack.rebuilt_top1 >= 0.9
    assert attack.to_json()["rank1_ratio_max"] < 1e-4  # every released block is rank 1


def test_learning_attack_reports_its_budget(releases, tiny_llama):
    report = audit(releases["default"], reference=tiny_llama, attacks=["learning"], learning=SMALL)
    data = _attack(report, "learning").to_json()
    assert data["budget"]["steps"] == 20 and data["units_attacked"] == 1
    assert data["recovered_fraction"] < 0.5 and 0.0 <= data["rebuilt_top1"] <= 1.0
    assert data["attacker_data"]["tokens"] > 0


def test_default_releases_are_clean_and_protect_more_than_paper_releases(releases, tiny_llama):
    default = audit(releases["default"], reference=tiny_llama, attacks=["coefficient_ratio"])
    paper = audit(releases["paper"], reference=tiny_llama, attacks=["coefficient_ratio"])
    assert default.leaks == [] and paper.leaks == []
    assert 0.0 < paper.protected_param_fraction < default.protected_param_fraction < 1.0


def _plant(release, tmp_path, source):
    """Copy a release and write source vectors into it: a down column into Θ, a gate row unchanged."""
    planted = tmp_path / "planted"
    shutil.copytree(release, planted)
    file = planted / "model.safetensors"
    tensors = load_file(str(file))
    original = load_file(str(source / "model.safetensors"))
    theta = tensors["model.layers.1.mlp.theta"].clone()
    theta[:, 3] = -original["model.layers.1.mlp.down_proj.weight"][:, 17]
    tensors["model.layers.1.mlp.theta"] = theta
    weight = tensors["model.layers.0.mlp.in_proj.weight"].clone()
    gate = original["model.layers.0.mlp.gate_proj.weight"]
    row = int((torch.nn.functional.normalize(weight[:1].double(), dim=-1)
               @ torch.nn.functional.normalize(gate.double(), dim=-1).T).abs().argmax())
    weight[0] = gate[row]
    tensors["model.layers.0.mlp.in_proj.weight"] = weight
    save_file(tensors, str(file), metadata={"format": "pt"})
    return planted


def test_the_leak_scan_finds_planted_leaks(releases, tiny_llama, tmp_path):
    planted = _plant(releases["default"], tmp_path, tiny_llama)
    report = audit(planted, reference=tiny_llama, attacks=["coefficient_ratio"])
    by_tensor = {leak["tensor"]: leak for leak in report.leaks}
    assert set(by_tensor) == {"model.layers.1.mlp.theta", "model.layers.0.mlp.in_proj.weight"}
    assert by_tensor["model.layers.1.mlp.theta"]["matches"] == [
        "model.layers.1.mlp.down columns [17] = released column 3"]
    assert by_tensor["model.layers.0.mlp.in_proj.weight"]["count"] == 1


def test_cli_json_fields_and_exit_codes(releases, tiny_llama):
    runner = CliRunner()
    args = ["audit", str(releases["paper"]), "--reference", str(tiny_llama), "--attack", "coefficient_ratio",
            "--json", "--quiet"]
    done = runner.invoke(cli, args)
    assert done.exit_code == 0, done.output
    payload = json.loads(done.stdout.strip())
    assert payload["command"] == "audit" and payload["ok"] is True
    assert {"protected_param_fraction", "attacks", "leaks"} <= set(payload)
    attack = payload["attacks"][0]
    assert {"name", "recovered_fraction", "relative_error", "seconds", "rebuilt_top1"} <= set(attack)
    failed = runner.invoke(cli, [*args, "--max-recovered", "0.5"])
    assert failed.exit_code == 1
    payload = json.loads(failed.stdout.strip().splitlines()[-1])
    assert payload["ok"] is False and "max-recovered" in payload["error"]
    assert payload["attacks"][0]["recovered_fraction"] >= 0.99
    assert runner.invoke(cli, [*args, "--max-recovered", "1.0"]).exit_code == 0


def test_without_reference_the_fractions_are_null_not_invented(releases):
    report = audit(releases["paper"], attacks=["coefficient_ratio"]).to_json()
    assert report["protected_param_fraction"] is None and report["leaks"] is None
    attack = report["attacks"][0]
    assert attack["recovered_fraction"] is None and attack["relative_error"] is None
    # A paper release of this tiny model is a poor approximation: the rebuilt (exact) MLPs disagree with it.
    assert attack["rebuilt_compared_with"] == "release" and 0.0 <= attack["rebuilt_top1"] <= 1.0
    with pytest.raises(UsageError, match="--reference"):
        audit(releases["paper"], max_recovered=0.1)


def test_secret_is_checked_never_used(releases, tmp_path):
    audit(releases["paper"], secret_file=releases["secret"], attacks=["coefficient_ratio"])
    wrong = tmp_path / "wrong"
    wrong.write_text("another secret\n")
    with pytest.raises(UsageError, match="secret_id"):
        audit(releases["paper"], secret_file=wrong, attacks=["coefficient_ratio"])


def test_record_stores_the_result(releases, tiny_llama, tmp_path):
    copy = tmp_path / "rel"
    shutil.copytree(releases["paper"], copy)
    done = CliRunner().invoke(cli, ["audit", str(copy), "--reference", str(tiny_llama), "--attack",
                                    "coefficient_ratio", "--record", "--quiet"])
    assert done.exit_code == 0, done.output
    record = json.loads((copy / "unswift.json").read_text())
    assert record["audit"]["attacks"][0]["name"] == "coefficient_ratio"
    assert "command" not in record["audit"]


def test_max_recovered_raises_check_failed_with_the_report(releases, tiny_llama):
    with pytest.raises(CheckFailed) as caught:
        audit(releases["paper"], reference=tiny_llama, attacks=["coefficient_ratio"], max_recovered=0.01)
    assert caught.value.details["attacks"][0]["name"] == "coefficient_ratio"


def _source(seed=0, intermediate=32, hidden=8):
    g = torch.Generator().manual_seed(seed)
    return SourceMLP(gate=torch.randn(intermediate, hidden, generator=g).double(),
                     down=torch.randn(hidden, intermediate, generator=g).double(),
                     up=torch.randn(intermediate, hidden, generator=g).double())


def _fit(intermediate=32, order=6):
    from packager.maths.series.activations import get_activation
    from packager.maths.series.fit import fit_taylor

    lo = torch.linspace(-3, -1, intermediate).double()
    return fit_taylor(get_activation("silu"), lo, lo + 4, order, normalise=True)


def test_hardening_is_reproducible_from_the_secret_and_scales_avoid_one():
    source, fit, mask = _source(), _fit(), torch.ones(32, dtype=torch.bool)
    first = build_layer(source, fit, mask, Hardening(), layer_generator(b"s", 0))
    again = build_layer(source, fit, mask, Hardening(), layer_generator(b"s", 0))
    other = build_layer(source, fit, mask, Hardening(), layer_generator(b"t", 0))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["theta"], other["theta"])
    unpermuted = build_layer(source, fit, mask, Hardening(permutation=False), layer_generator(b"s", 0))
    scales = unpermuted["in_proj.weight"][32:].norm(dim=-1) / source.up.norm(dim=-1)
    assert ((scales <= SCALE_EXCLUDED[0] + 1e-12) | (scales >= SCALE_EXCLUDED[1] - 1e-12)).all()
    assert ((scales >= 0.5 - 1e-12) & (scales <= 2.0 + 1e-12)).all()


def test_the_window_re_expands_the_series_exactly_inside_the_calibrated_interval():
    from packager.maths.series import bases

    source, fit, mask = _source(), _fit(), torch.ones(32, dtype=torch.bool)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1)).double() * 0.3
    outputs = []
    for hardening in (Hardening(permutation=False), Hardening(permutation=False, window=0.3)):
        tensors = build_layer(source, fit, mask, hardening, layer_generator(b"s", 0))
        z = x @ tensors["in_proj.weight"].T + tensors["in_proj.bias"]
        t, u = z[:, :32], z[:, 32:]
        features = bases.design(t, 6, "monomial", "none") * u.unsqueeze(-1)
        outputs.append(features.flatten(1) @ tensors["theta"].T)
    assert torch.allclose(outputs[0], outputs[1], rtol=1e-9, atol=1e-9)
    assert Hardening(window=0.3).to_json()["window"] == 0.3
