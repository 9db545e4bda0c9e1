"""Trace identifies the recipient after every reparametrisation (and casts, quantisation, collusion).

Setup: a tiny random Llama (hidden 64, 4 heads, 2 KV heads, head dim 16, 2 layers: 73,728 fingerprinted
weights) in memory, pattern std = 1 % of each row's RMS, a ledger of 4 recipients, the copy given to
"alice". Thresholds, as in benchmarks/fingerprint_robustness.py: the right recipient(s) at Šidák-corrected
p ≤ 1e-9, every other recipient at corrected p > 1e-3; the source itself and an unrelated model: nobody
identified, and `derived_from_reference` true for the source and false for the unrelated model.
"""

from __future__ import annotations

import math

import pytest
import torch
from support import launder
from transformers import LlamaConfig, LlamaForCausalLM

from packager.maths.fingerprint.alignment import Geometry
from packager.maths.fingerprint.embed import fingerprint_state, fingerprint_tensor
from packager.maths.fingerprint.keys import hardening_secret, pattern_digest, raw_pattern, recipient_key
from packager.maths.fingerprint.profile import ceilings, kfac_profile, predicted_kl, relative_profile
from packager.maths.fingerprint.roles import Dims, parts
from packager.maths.fingerprint.score import log10_sidak
from packager.maths.fingerprint.trace import trace

SECRET = b"test-secret"
RECIPIENTS = ["alice", "bob", "carol", "dave"]


def config(tied: bool = False) -> LlamaConfig:
    return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=128,
                       tie_word_embeddings=tied, attn_implementation="eager")


def state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights (std 0.05 matrices, norms 1 ± 0.3), float32, Llama names."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaForCausalLM(config()).state_dict().items()}
    return {k: (1.0 + 0.3 * torch.randn(s, generator=g)) if len(s) == 1 else 0.05 * torch.randn(s, generator=g)
            for k, s in shapes.items()}


def role_weights(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    dims = Dims.from_config(config())
    return {p.role.key: p.read(t) for name, t in sd.items() for p in parts(name, tuple(t.shape), dims)}


SOURCE = state(0)
PROFILE = relative_profile(role_weights(SOURCE), 0.01)
GEOM = Geometry.from_config(config())
DIMS = Dims.from_config(config())


def copy_for(name: str) -> dict[str, torch.Tensor]:
    return fingerprint_state(SOURCE, recipient_key(SECRET, name), PROFILE, DIMS)


ALICE = copy_for("alice")


def gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def q4(sd):
    return launder.map_matrices(sd, lambda w: launder.quantize_rtn(w, 4, 32))


SUSPECTS = {
    "as_is": lambda: ALICE,
    "bf16": lambda: {k: v.to(torch.bfloat16).float() for k, v in ALICE.items()},
    "int8": lambda: launder.map_matrices(ALICE, launder.quantize_int8_rows),
    "rtn4_g32": lambda: q4(ALICE),
    "fold_norms": lambda: launder.fold_norms(ALICE, GEOM),
    "rotate_residual": lambda: launder.rotate_residual(ALICE, GEOM, launder.random_orthogonal(64, gen())),
    "rotate_residual_scaled": lambda: launder.rotate_residual(ALICE, GEOM, launder.random_orthogonal(64, gen()), 1.8),
    "permute_heads": lambda: launder.permute_heads(
        launder.permute_heads(ALICE, GEOM, 0, torch.tensor([1, 0]), [torch.tensor([1, 0]), torch.tensor([1, 0])]),
        GEOM, 1, torch.tensor([1, 0]), [torch.tensor([0, 1]), torch.tensor([1, 0])]),
    "rope_gauge": lambda: launder.rope_gauge(
        ALICE, GEOM, 0, (torch.rand(2, 8, generator=gen()) * 2 - 1) * math.pi,
        torch.exp(torch.rand(2, 8, generator=gen(8)) * 2 - 1)),
    "mix_values": lambda: launder.mix_values(
        ALICE, GEOM, 1, torch.eye(16).repeat(2, 1, 1) + 0.5 * torch.randn(2, 16, 16, generator=gen())),
    "mlp_permutation": lambda: launder.mlp_gauge(ALICE, GEOM, 0, torch.randperm(128, generator=gen()),
                                                 torch.ones(128)),
    "mlp_sign_scale": lambda: launder.mlp_gauge(
        ALICE, GEOM, 1, torch.arange(128),
        torch.where(torch.rand(128, generator=gen()) < 0.5, -1.0, 1.0) * torch.exp(torch.rand(128, generator=gen(9)))),
    "taylor_rebuild": lambda: launder.taylor_rebuild(ALICE, GEOM, gen()),
    "all_gauges": lambda: launder.random_laundering(ALICE, GEOM, gen()),
    "all_gauges_rtn4": lambda: q4(launder.random_laundering(ALICE, GEOM, gen())),
    "pruned_20pct": lambda: launder.map_matrices(ALICE, lambda w: launder.prune_magnitude(w, 0.2),
                                                 include_embeddings=False),
}

EXPECTED_UNDONE = {
    "rotate_residual": "residual_rotation", "rotate_residual_scaled": "residual_rotation",
    "permute_heads": "kv_group_permutation", "mix_values": "value_output_mixing",
    "mlp_permutation": "mlp_permutation", "mlp_sign_scale": "mlp_sign_flips", "rope_gauge": "rope_groups",
    "taylor_rebuild": "mlp_scale_layers",
}


def check(result, guilty: list[str]) -> None:
    by_name = {s.name: s for s in result.scores}
    for name in guilty:
        assert by_name[name].log10_p_corrected <= -9, (name, by_name[name])
    for name in RECIPIENTS:
        if name not in guilty:
            assert by_name[name].log10_p_corrected > -3, (name, by_name[name])
    assert sorted(result.identified) == sorted(guilty)


@pytest.mark.parametrize("case", sorted(SUSPECTS))
def test_identifies_recipient(case):
    result = trace(SOURCE, SUSPECTS[case](), GEOM, PROFILE, SECRET, RECIPIENTS)
    check(result, ["alice"])
    assert result.derived
    if case in EXPECTED_UNDONE:
        assert result.undone[EXPECTED_UNDONE[case]], result.undone
    if case == "rope_gauge":
        assert result.undone["rope_max_phase"] > 0.1


def test_gate_width_gauge_of_a_rebuild_is_undone():
    """A rebuild recovers each gate row up to a per-channel factor: alignment fits it back."""
    suspect = dict(ALICE)
    for layer in range(GEOM.layers):
        name = f"model.layers.{layer}.mlp.gate_proj.weight"
        factor = torch.exp(torch.randn(128, generator=gen(layer)) * 0.2)
        suspect[name] = ALICE[name] * factor[:, None]
    result = trace(SOURCE, suspect, GEOM, PROFILE, SECRET, RECIPIENTS)
    check(result, ["alice"])
    assert result.undone["gate_rescaled_layers"] == GEOM.layers


def test_no_false_undo_on_plain_copy():
    undone = trace(SOURCE, q4(ALICE), GEOM, PROFILE, SECRET, RECIPIENTS).undone
    assert not undone["residual_rotation"] and undone["value_output_mixing"] == 0
    assert undone["mlp_permutation"] == 0 and undone["kv_group_permutation"] == 0
    assert undone["rope_groups"] == 0 and undone["mlp_scale_layers"] == 0
    assert undone["gate_rescaled_layers"] == 0


@pytest.mark.parametrize("colluders", [["alice", "bob"], ["alice", "bob", "carol"]])
def test_colluders_each_identified(colluders):
    mixed = launder.average([copy_for(n) for n in colluders])
    check(trace(SOURCE, mixed, GEOM, PROFILE, SECRET, RECIPIENTS), colluders)


def test_source_itself_nobody():
    result = trace(SOURCE, SOURCE, GEOM, PROFILE, SECRET, RECIPIENTS)
    assert result.identified == [] and result.derived
    assert all(s.log10_p_corrected > -3 for s in result.scores)
    quantised = trace(SOURCE, q4(SOURCE), GEOM, PROFILE, SECRET, RECIPIENTS)
    assert quantised.identified == [] and quantised.derived
    assert all(s.log10_p_corrected > -3 for s in quantised.scores)


def test_unrelated_model_nobody():
    result = trace(SOURCE, state(seed=123), GEOM, PROFILE, SECRET, RECIPIENTS)
    assert result.identified == [] and not result.derived
    assert all(s.log10_p_corrected > -3 for s in result.scores)


def test_reparametrisations_are_exact_gauges():
    """The laundering helpers change no logit (so the trace is tested on functions equal to the copy's)."""
    ids = torch.randint(0, 256, (1, 12), generator=gen())
    model = LlamaForCausalLM(config()).eval()
    model.load_state_dict(ALICE, strict=False)
    before = model(input_ids=ids).logits
    model.load_state_dict(launder.random_laundering(ALICE, GEOM, gen()), strict=False)
    model.config.tie_word_embeddings = False
    after = model(input_ids=ids).logits
    assert torch.allclose(before, after, atol=1e-4), float((before - after).abs().max())


def test_keys_and_patterns_are_pinned():
    """The derivations and torch's stream: a change here would make every issued fingerprint unreadable."""
    assert pattern_digest() == "1c995d0d8b0950cb"
    assert recipient_key(SECRET, "alice").hex()[:16] == recipient_key(SECRET, "alice").hex()[:16]
    assert recipient_key(SECRET, "alice") != recipient_key(SECRET, "bob")
    assert hardening_secret(SECRET, "alice") != hardening_secret(SECRET, "bob")
    assert hardening_secret(SECRET, "alice").decode() != recipient_key(SECRET, "alice").hex()
    g = raw_pattern(recipient_key(SECRET, "alice"), "layer=0/q", (3, 4))
    assert torch.equal(g, raw_pattern(recipient_key(SECRET, "alice"), "layer=0/q", (3, 4)))


def test_half_precision_input_gives_float32():
    name = "model.layers.0.mlp.up_proj.weight"
    out = fingerprint_tensor(name, SOURCE[name].bfloat16(), recipient_key(SECRET, "a"), PROFILE, DIMS)
    assert out.dtype == torch.float32
    assert not torch.equal(out, SOURCE[name].bfloat16().float())


def test_kfac_profile_spends_the_budget_under_the_ceiling():
    weights = role_weights(SOURCE)
    x = {r: torch.rand(w.shape[1], generator=gen()).double() + 0.1 for r, w in weights.items()}
    d = {r: torch.rand(w.shape[0], generator=gen(3)).double() * 1e-3 for r, w in weights.items()}
    cap = ceilings(weights, 0.01)
    profile = kfac_profile(x, d, kl_budget=1e-7, ceiling=cap)
    assert predicted_kl(profile, {r: (d[r], x[r]) for r in weights}) == pytest.approx(1e-7, rel=1e-6)
    for role, shape in profile.items():
        assert bool((shape.matrix() <= cap[role].float()[:, None] * (1 + 1e-6)).all())


def test_sidak():
    assert log10_sidak(-12.0, 100) == pytest.approx(-10.0, abs=1e-6)
    assert log10_sidak(-400.0, 8) == pytest.approx(-400.0 + math.log10(8))
