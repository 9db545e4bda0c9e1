"""Trace a suspect: align it to the source layer by layer, score every recipient, decide.

Memory: the anchor (embedding and LM head of both models) plus one decoder layer of each model at a
time, in float64. `source` and `suspect` may be lazy mappings (one tensor read per lookup).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from packager.maths.fingerprint.alignment import Geometry, align_layer, fit_residual, read_anchor, read_layer
from packager.maths.fingerprint.keys import recipient_key
from packager.maths.fingerprint.profile import Profile
from packager.maths.fingerprint.roles import ROLES, Role
from packager.maths.fingerprint.score import RecipientScore, Scorer, derived_from_reference, filter_matrix, identified


@dataclass
class TraceResult:
    scores: list[RecipientScore]
    identified: list[str]
    derived: bool
    derived_score: float
    undone: dict[str, object]
    seconds: dict[str, float] = field(default_factory=dict)
    entries: int = 0

    def to_json(self) -> dict:
        """The fields of `unswift trace --json` this layer knows (docs/INTERFACE.md, trace)."""
        return {
            "identified": self.identified[0] if self.identified else None,
            "identified_all": self.identified,
            "derived_from_reference": self.derived, "derived_score": round(self.derived_score, 6),
            "recipients": [{"name": s.name, "z": round(s.z, 3), "p_value": s.p_corrected,
                            "log10_p_value": round(s.log10_p_corrected, 3)} for s in self.scores],
            "aligned": self.undone, "entries": self.entries,
        }


def trace(source: Mapping[str, torch.Tensor], suspect: Mapping[str, torch.Tensor], geom: Geometry,
          profile: Profile, secret: bytes, recipients: list[str]) -> TraceResult:
    """Score every recipient in `recipients` (the ledger) against `suspect`."""
    keys = {r: recipient_key(secret, r) for r in recipients}
    return trace_keys(source, suspect, geom, profile, keys)


def trace_keys(source: Mapping[str, torch.Tensor], suspect: Mapping[str, torch.Tensor], geom: Geometry,
               profile: Profile, keys: dict[str, bytes]) -> TraceResult:
    """`trace` with recipient keys given directly (false-accusation runs use random keys)."""
    t0 = time.process_time()
    gauge = fit_residual(read_anchor(source, geom), read_anchor(suspect, geom))
    t_align = time.process_time() - t0
    scorer = Scorer(keys)
    cosines: dict[str, float] = {}
    undone = {"residual_rotation": gauge.undone, "residual_explained": round(gauge.explained, 4),
              "residual_scale": round(gauge.s, 6) if gauge.undone else 1.0,
              "kv_group_permutation": 0, "q_head_permutation": 0, "rope_groups": 0, "rope_max_phase": 0.0,
              "rope_max_log_scale": 0.0, "value_output_mixing": 0, "mlp_permutation": 0, "mlp_scale_layers": 0,
              "mlp_sign_flips": 0, "mlp_max_log_scale": 0.0, "gate_rescaled_layers": 0}
    t_score = 0.0
    for layer in range(geom.layers):
        t1 = time.process_time()
        src = read_layer(source, layer, geom)
        aligned, rep = align_layer(src, read_layer(suspect, layer, geom), gauge, geom)
        undone["kv_group_permutation"] += int(rep.kv_permuted)
        undone["q_head_permutation"] += int(rep.q_permuted)
        undone["rope_groups"] += rep.rope_undone
        undone["mlp_scale_layers"] += int(rep.mlp_scaled)
        undone["rope_max_phase"] = max(undone["rope_max_phase"], round(rep.rope_max_phase, 6))
        undone["rope_max_log_scale"] = max(undone["rope_max_log_scale"], round(rep.rope_max_log_scale, 6))
        undone["value_output_mixing"] += rep.vo_undone
        undone["mlp_permutation"] += int(rep.mlp_permuted)
        undone["mlp_sign_flips"] += rep.mlp_flipped
        undone["gate_rescaled_layers"] += int(rep.gate_rescaled)
        undone["mlp_max_log_scale"] = max(undone["mlp_max_log_scale"], round(rep.mlp_max_log_scale, 6))
        filters = {}
        for role in ROLES:
            key = Role(layer, role).key
            cosines[key] = float((aligned[role] * src[role]).sum() /
                                 (aligned[role].norm() * src[role].norm()).clamp_min(1e-300))
            if key in profile:
                filters[key] = filter_matrix(aligned[role] - src[role], profile[key])
        t2 = time.process_time()
        t_align += t2 - t1
        for key, c in filters.items():
            scorer.add(key, c)
        t_score += time.process_time() - t2
    scores = scorer.scores()
    derived, derived_score = derived_from_reference(cosines)
    names = identified(scores)
    return TraceResult(scores, names, derived, derived_score, undone,
                       {"align": t_align, "score": t_score}, scorer.entries)


def max_other(result: TraceResult, guilty: list[str]) -> float:
    """The largest |z| among recipients not in `guilty`."""
    others = [abs(s.z) for s in result.scores if s.name not in guilty]
    return max(others) if others else math.nan
