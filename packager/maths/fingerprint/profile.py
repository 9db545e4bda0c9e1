"""Where each role's pattern is spent: the rank-1 standard-deviation profile S and its fidelity budget.

The pattern added to a matrix is Δ = S ⊙ G, G i.i.d. N(0, 1). To second order the expected
teacher-forced KL per token is ½ Σᵢⱼ Sᵢⱼ² Fᵢⱼ (F the diagonal of the per-token Fisher; cross terms vanish
in expectation over independent G), so the fidelity cost of a profile is known, in nats per token,
before any forward pass.

Shape (`kfac_profile`): Sᵢⱼ² ∝ 1 / (E[δᵢ²] E[xⱼ²]) with x the layer's input and δ the gradient at its
output for labels sampled from the model itself: the Kronecker factors of the Fisher, so that every
entry costs the same KL ("spend where the function is least sensitive"). Rank 1 because the Fisher's
diagonal is close to a row effect times a column effect, because a rank-1 profile is a few kilobytes per
matrix that the trace keeps, and because it needs only per-token statistics (one hooked
forward-backward pass), not a float64 accumulator as large as the model.

Ceiling: every entry's std is capped at `CEILING` × its row's RMS. Equal-KL shaping alone puts
perturbations several times larger than the weights into the few rows the Fisher says barely matter
(dead heads), where structured pruning removes them for free; the capped profile is re-scaled by
bisection so that it still spends exactly the budget.

Budget: `KL_BUDGET` nats/token (predicted). Top-1 agreement, not KL, binds: flips happen where the
source's top-2 logits are nearly tied. On the demo model the prototype set the budget so that the
expected number of top-1 flips on 8,176 held-out tokens is about 1.5; docs/BENCHMARKS.md has what the
package measures with it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

#: Predicted KL (nats/token) the pattern may cost: ½ Σ S²F.
KL_BUDGET = 3e-7
#: The largest std of any entry, relative to its row's RMS.
CEILING = 0.01


@dataclass(frozen=True)
class Shape:
    """The std profile of one role's pattern: S = min(row ⊗ col, ceiling per row), float32."""

    row: torch.Tensor  # [out]
    col: torch.Tensor  # [in]
    ceiling: torch.Tensor | None = None  # [out]

    def matrix(self) -> torch.Tensor:
        m = self.row[:, None] * self.col[None, :]
        return m if self.ceiling is None else torch.minimum(m, self.ceiling[:, None])


Profile = dict[str, Shape]  # role key -> Shape


def delta(key: bytes, role: str, shape: Shape) -> torch.Tensor:
    """Δ = S ⊙ G, the matrix added to one role for one recipient (float32)."""
    from packager.maths.fingerprint.keys import raw_pattern

    return raw_pattern(key, role, (shape.row.numel(), shape.col.numel())) * shape.matrix()


def row_rms(weight: torch.Tensor) -> torch.Tensor:
    return weight.double().pow(2).mean(1).sqrt()


def ceilings(weights: dict[str, torch.Tensor], relative: float = CEILING) -> dict[str, torch.Tensor]:
    """Per role and row: `relative` × the row's RMS, the largest pattern std any entry of the row may get."""
    return {role: relative * row_rms(w) for role, w in weights.items()}


def kfac_profile(input_sq: dict[str, torch.Tensor], output_grad_sq: dict[str, torch.Tensor], *,
                 kl_budget: float = KL_BUDGET, ceiling: dict[str, torch.Tensor] | None = None) -> Profile:
    """S² ∝ 1 / (E[δᵢ²] E[xⱼ²]) per role, capped by `ceiling`, scaled so that ½ Σ S²F = `kl_budget`
    with F ≈ E[δᵢ²] E[xⱼ²] (the Kronecker-factored Fisher).

    Zero statistics (a column no token ever activates) get the largest finite weight of their role, so
    the ceiling bounds them.
    """
    factors, fisher_factors = {}, {}
    for role in input_sq:
        x = input_sq[role].double()
        d = output_grad_sq[role].double()
        x = torch.where(x > 0, x, x[x > 0].min() if bool((x > 0).any()) else torch.ones_like(x))
        d = torch.where(d > 0, d, d[d > 0].min() if bool((d > 0).any()) else torch.ones_like(d))
        factors[role] = (d.rsqrt(), x.rsqrt())
        fisher_factors[role] = (d, x)
    return budget_profile(factors, fisher_factors, kl_budget, ceiling)


def _cost(factors, fisher_factors, ceiling, amplitude: float, capped: bool = True) -> float:
    """½ Σ S²F of the profile at `amplitude` (float64), F the rank-1 Fisher (never materialised twice)."""
    total = 0.0
    for role, (row, col) in factors.items():
        m = amplitude * row[:, None] * col[None, :]
        if capped and ceiling is not None:
            m = torch.minimum(m, ceiling[role].double()[:, None])
        fr, fc = fisher_factors[role]
        total += 0.5 * float(((m * m) * fc[None, :]).sum(1).mul(fr).sum())
    return total


def budget_profile(factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
                   fisher_factors: dict[str, tuple[torch.Tensor, torch.Tensor]], kl_budget: float,
                   ceiling: dict[str, torch.Tensor] | None = None) -> Profile:
    """Rank-1 shapes scaled by one amplitude so that ½ Σ S²F = `kl_budget` (float64).

    Without ceilings the cost is quadratic in the amplitude; with them it is monotone but not quadratic,
    and the amplitude is found by bisection between the uncapped solution (a lower bound) and the
    amplitude at which every entry is capped. When even that costs less than the budget (a model whose
    function barely depends on these weights), every entry sits at its ceiling: the pattern then costs
    less than the budget, never more.
    """
    amplitude = (kl_budget / _cost(factors, fisher_factors, None, 1.0, capped=False)) ** 0.5
    if ceiling is not None:
        saturated = max(float((ceiling[role].double()[:, None] / (row[:, None] * col[None, :])).max())
                        for role, (row, col) in factors.items())
        if _cost(factors, fisher_factors, ceiling, saturated) <= kl_budget:
            amplitude = saturated
        elif saturated > amplitude:
            lo, hi = amplitude, saturated
            for _ in range(60):
                mid = (lo * hi) ** 0.5
                lo, hi = (mid, hi) if _cost(factors, fisher_factors, ceiling, mid) < kl_budget else (lo, mid)
            amplitude = hi
    return {role: Shape((row.double() * amplitude).float(), col.float(),
                        None if ceiling is None else ceiling[role].float())
            for role, (row, col) in factors.items()}


def relative_profile(weights: dict[str, torch.Tensor], relative: float) -> Profile:
    """Pattern std = `relative` × each row's RMS: no statistics needed (tests, and a fallback)."""
    return {role: Shape((relative * row_rms(w)).float(), torch.ones(w.shape[1])) for role, w in weights.items()}


def predicted_kl(profile: Profile, fisher_factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> float:
    """½ Σ S²F with the rank-1 Fisher: the expected KL per token the profile costs (float64)."""
    total = 0.0
    for role, shape in profile.items():
        fr, fc = (t.double() for t in fisher_factors[role])
        total += 0.5 * float((shape.matrix().double().pow(2) * fc[None, :]).sum(1).mul(fr).sum())
    return total


def profile_tensors(profile: Profile) -> dict[str, torch.Tensor]:
    """The profile as named tensors (`ROLE/row`, `ROLE/col`, `ROLE/ceiling`), for a file."""
    tensors = {}
    for role, shape in sorted(profile.items()):
        tensors[f"{role}/row"] = shape.row.float().contiguous()
        tensors[f"{role}/col"] = shape.col.float().contiguous()
        if shape.ceiling is not None:
            tensors[f"{role}/ceiling"] = shape.ceiling.float().contiguous()
    return tensors


def from_tensors(tensors: dict[str, torch.Tensor]) -> Profile:
    """The inverse of `profile_tensors`.

    Raises:
        ValueError: a role lacks its row or column vector.
    """
    roles = {name.rsplit("/", 1)[0] for name in tensors}
    out = {}
    for role in roles:
        if f"{role}/row" not in tensors or f"{role}/col" not in tensors:
            raise ValueError(f"profile role {role!r} lacks its row or column vector")
        out[role] = Shape(tensors[f"{role}/row"].float(), tensors[f"{role}/col"].float(),
                          tensors.get(f"{role}/ceiling"))
    return out


def profile_digest(profile: Profile) -> str:
    """SHA-256 (16 hex digits) of the profile's tensors: names the profile in the ledger."""
    digest = hashlib.sha256()
    for name, tensor in profile_tensors(profile).items():
        digest.update(name.encode() + b"\0" + tensor.numpy().tobytes())
    return digest.hexdigest()[:16]
