"""An honest slowdown (issue 14) on a tiny checkpoint: no release ships padding, `--slowdown X` is the
slowdown after the truncation attack and is refused (exit 2, naming the largest honest value) beyond
what the model allows, and the audit's `truncation` attack reports its figures. Timings are never
asserted: where a choice depends on them, a deterministic machine stands in for the clock."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from packager.cli import cli


def _json(result) -> dict:
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, (result.stdout, result.stderr)
    return json.loads(lines[0])


def _machine(model, checkpoint, sizer, order, expanded, *, context, layers=None, **_):
    """A publishing machine whose decode time follows the bytes model, 60 % of its extra time (deterministic)."""
    return 1.0 + 0.6 * (sizer.predicted_layers(layers, context=context) - 1.0)


@pytest.fixture(scope="module")
def slow_release(tiny_llama, tiny_llama_stats, tmp_path_factory):
    """A `--slowdown 1.5` release of the tiny model, timed by `_machine`."""
    from packager import api
    from packager.stages.options import ConvertOptions
    from packager.stages.plan import slowdown as autoslowdown

    patch = pytest.MonkeyPatch()
    patch.setattr(autoslowdown, "measure_slowdown", _machine)
    try:
        out = tmp_path_factory.mktemp("slow") / "slow"
        api.convert(tiny_llama, out, stats=tiny_llama_stats, options=ConvertOptions(slowdown=1.5))
    finally:
        patch.undo()
    return out


@pytest.fixture(scope="module")
def order48_release(tiny_llama, tiny_llama_stats, tmp_path_factory):
    from packager import api
    from packager.stages.options import ConvertOptions

    out = tmp_path_factory.mktemp("order48") / "order48"
    api.convert(tiny_llama, out, stats=tiny_llama_stats, options=ConvertOptions(order=48, coverage=1.0))
    return out


@pytest.mark.parametrize("which", ["slow_release", "order48_release"])
def test_no_released_theta_column_is_padding(which, request):
    """Every Θ column of every unit carries more than float32 rounding of its unit's output can see (the
    criterion of docs/FORMAT.md), measured with the release's own features on calibration-like text."""
    from safetensors import safe_open

    from packager.stages.audit.padding import scan_release

    release = request.getfixturevalue(which)
    scans = scan_release(release, tokens=1024)
    with safe_open(str(release / "model.safetensors"), "pt") as handle:
        thetas = [name for name in handle.keys() if name.endswith("theta.weight") or name.endswith(".theta")]
    assert len(scans) == len(thetas) > 0  # every Θ tensor of the release was scanned
    for scan in scans:
        assert scan.columns > 0
        assert scan.zero == [] and scan.below == [], scan.to_json()
        assert scan.min_ratio_series is None or scan.min_ratio_series > 1.0


def test_order_48_ships_no_term_the_fit_cannot_fill(order48_release):
    """Orders above what the fit can fill are not written: no channel keeps order 48 on a tiny model whose
    activations are resolved to float32 long before."""
    spec = json.loads((order48_release / "config.json").read_text())["unswift"]
    orders = [g["order"] for layer in spec["layers"] for g in layer.get("groups") or []]
    assert orders and max(orders) < 48


def test_slowdown_record_is_the_slowdown_after_truncation(slow_release):
    record = json.loads((slow_release / "unswift.json").read_text())
    chosen = record["slowdown"]
    assert chosen["requested"] == 1.5
    assert chosen["measured"] == pytest.approx(1.5, rel=0.10)  # the deterministic machine's figure
    assert chosen["largest"] >= chosen["measured"] and chosen["largest_measured"] is True
    assert chosen["padding_ceiling"] >= chosen["largest"]
    assert "after the audit's truncation" in chosen["definition"]
    assert chosen["slowdowns"]["after_truncation"] == chosen["measured"] and chosen["slowdowns"]["rebuild"] is None
    assert chosen["self_top1"] >= 0.999 and chosen["self_kl"] <= 1e-3
    assert 0.0 < chosen["coverage"] <= 1.0 and len(chosen["timings"]) >= 2


def test_slowdown_above_the_largest_honest_value_exits_2_naming_it(tiny_llama, tiny_llama_stats, tmp_path,
                                                                    monkeypatch):
    from packager.stages.plan import slowdown as autoslowdown

    monkeypatch.setattr(autoslowdown, "measure_slowdown", _machine)
    out = tmp_path / "release"
    result = CliRunner().invoke(cli, ["convert", str(tiny_llama), "--stats", str(tiny_llama_stats), "--out", str(out),
                                      "--slowdown", "2.6", "--json"])
    assert result.exit_code == 2, result.output
    error = _json(result)["error"]
    match = re.search(r"largest honest slowdown, after the truncation attack .* is (\d+\.\d+)x", error)
    assert match, error
    largest = float(match.group(1))
    assert 1.0 < largest < 2.6 / 1.05
    assert not out.exists()
    # the figure named is one that convert accepts
    again = CliRunner().invoke(cli, ["convert", str(tiny_llama), "--stats", str(tiny_llama_stats), "--out",
                                     str(tmp_path / "max"), "--slowdown", f"{largest:.2f}", "--json"])
    assert again.exit_code == 0, again.output


def test_dry_run_names_the_ceiling_without_padding_before_any_work(tiny_llama, tiny_llama_stats, tmp_path):
    out = tmp_path / "release"
    base = ["convert", str(tiny_llama), "--out", str(out), "--dry-run", "--json"]
    without = _json(CliRunner().invoke(cli, [*base, "--slowdown", "2"]))
    assert without["slowdown"]["padding_ceiling"] is None and "--stats" in without["slowdown"]["basis"]
    planned = _json(CliRunner().invoke(cli, [*base, "--slowdown", "2", "--stats", str(tiny_llama_stats)]))
    ceiling = planned["slowdown"]["padding_ceiling"]
    assert ceiling > 1.0 and planned["predicted_decode_slowdown"] == pytest.approx(ceiling)
    beyond = CliRunner().invoke(cli, [*base, "--slowdown", f"{ceiling * 1.5:.2f}", "--stats", str(tiny_llama_stats)])
    assert beyond.exit_code == 2
    assert f"{ceiling:.2f}x" in _json(beyond)["error"] and "without padding" in _json(beyond)["error"]
    assert list(tmp_path.iterdir()) == []


def test_truncation_attack_reports_bytes_slowdowns_and_fidelity(tiny_release, tiny_llama):
    """The audit's `truncation` fields (docs/INTERFACE.md): what it keeps, the three slowdowns measured side
    by side, and that the truncation holds the attacker's bounds and the release's fidelity."""
    from packager import api

    report = api.audit(tiny_release, reference=tiny_llama, attacks=("kerckhoffs", "truncation")).to_json()
    attack = next(a for a in report["attacks"] if a["name"] == "truncation")
    assert 0.0 < attack["kept_fraction"] <= 1.0
    assert attack["theta_bytes"]["kept"] <= attack["theta_bytes"]["shipped"]
    for name in ("shipped_slowdown", "effective_slowdown", "rebuild_slowdown"):
        assert attack[name] is not None and attack[name] > 0.0
    assert set(attack["timing"]["slowdowns"]) == {"release", "truncated", "rebuild"}
    assert attack["self_top1"] >= 1.0 - attack["top1_drop"] and attack["self_kl"] <= attack["kl_bound"]
    assert attack["top1_drop"] == 0.001 and attack["kl_bound"] == 1e-3
    slack = max(attack["top1_drop"], 1.0 / report["heldout_tokens"])
    assert attack["heldout_top1"] >= attack["release_heldout_top1"] - slack
    assert attack["expanded_channels"] > 0 and attack["attacker_tokens"] > 0
