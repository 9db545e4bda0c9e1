"""The `truncation` attack, run: how much of a release's slowdown survives an attacker who drops terms.

The attacker holds the release and text of its own. It accepts a truncation while, on its text, the
truncated release agrees with the release itself:

    top-1 agreement >= 1 - TOP1_DROP (0.001)   and   mean KL(release || truncated) <= KL_BOUND (1e-3 nats/token).

Self-agreement is what the attacker can measure; each token a truncation flips moves top-1 against any
third model (the source) by at most one token, so self-agreement >= 0.999 bounds the change of the
release's fidelity by 0.001 on the same text. The KL bound, 1e-3 nats per token, is just below what
running the demo source in bfloat16 instead of float32 does (1.2e-3, top-1 0.968, measured), a change
users accept routinely; on the demo model it never binds (top-1 binds first). The audit, which may have
the source, then checks the chosen truncation on its held-out text: top-1 against the source within
TOP1_DROP of the release's own (at least one token: 0.001 of a few hundred tokens is below one) and KL
against the release within KL_BOUND; while that fails, λ backs off.

The search (`packager.stages.audit.attacks.truncation` has the arithmetic): the release's units are
replaced by `FastUnit`s (the rank-1 factors evaluated by Clenshaw, float32); one pass over the
attacker's text records every unit's inputs and per-token output energies; tail energies per channel;
bisection on log λ (BISECTION_STEPS forward passes); kept orders rounded up into at most GROUPS groups.
Then the truncated units are built as the runtime's own `TaylorMLP`s (loadable shapes, the release's
values) and timed, interleaved as `unswift bench` times: the source (or, without it, the kerckhoffs
rebuild: a plain model of the source's shapes), the release, the truncated release and the rebuild.
"""

from __future__ import annotations

import dataclasses
import math
import time
import types
from dataclasses import dataclass, field

import torch
from torch import nn

from packager.progress import Progress, reporter
from packager.stages.audit.attacks import RecoveredMLP, ReleasedMLP
from packager.stages.audit.attacks import truncation as arithmetic

TOP1_DROP = 0.001
#: Mean KL bound (nats per token) of the truncated release against the release.
KL_BOUND = 1e-3
GROUPS = 8
#: What one more channel group costs the runtime, in Θ columns of one unit (feature build per group),
#: measured on the demo's shapes on one CPU thread: ~64 µs per group against 0.128 µs per float32
#: column and 0.055 µs per bfloat16 column.
GROUP_COST = {"float32": 500.0, "bfloat16": 1200.0, "float16": 1200.0}
BISECTION_STEPS = 7
#: Natural log of λ searched (the demo model's knee lies near -23).
LOG_LAMBDA = (-36.0, -8.0)
#: When the audit's check on held-out text fails, λ is divided by e^BACKOFF, at most MAX_BACKOFFS times.
BACKOFF = 0.75
MAX_BACKOFFS = 8
#: Timed decode steps per model (after warm-up), as `unswift bench`.
TIMING_STEPS = 20
TIMING_WARMUP = 3


class FastUnit(nn.Module):
    """The attacker's model of one released unit (float32): Σ_j p_j(t_j) u'_j v_j plus the plaintext channels.

    `keep` (per expanded channel, release order) is the highest term kept; -1 drops the channel.
    """

    def __init__(self, mlp: ReleasedMLP, factors: arithmetic.Factors) -> None:
        super().__init__()
        self.mlp, self.factors = mlp, factors
        self.in_weight = mlp.in_weight.float()
        self.in_bias = mlp.in_bias.float()
        self.down = torch.cat([factors.vectors, factors.plain], 1).float()
        self.out_bias = None if mlp.out_bias is None else mlp.out_bias.float()
        self.clenshaw = mlp.basis == "chebyshev" and mlp.extrapolation == "linear"
        self.plain_mask: torch.Tensor | None = None
        self.record = False
        self.inputs: list[torch.Tensor] = []
        self.energies: list[torch.Tensor] = []
        self.set_keep(None)

    def set_keep(self, keep: torch.Tensor | None, plain_keep: torch.Tensor | None = None) -> None:
        parts, start = [], 0
        for (count, order), c in zip(self.factors.groups, self.factors.coefficients, strict=True):
            if keep is not None:
                k = keep[start:start + count]
                c = c * (torch.arange(order + 1) <= k.unsqueeze(-1))
                c = c[:, :max(int(k.max()) if count else 0, 0) + 1]
            parts.append(c.float())
            start += count
        self.coefficients = parts
        self.plain_mask = None if plain_keep is None else plain_keep.float()

    def _series(self, c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.clenshaw:
            return arithmetic.chebyshev(c, t)
        from packager.maths.series import bases

        return (bases.design(t.double(), c.shape[-1] - 1, self.mlp.basis, self.mlp.extrapolation)
                * c.double()).sum(-1).float()

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1]).float()
        if self.record:
            self.inputs.append(x)
        z = torch.addmm(self.in_bias, x, self.in_weight.T)
        inter, gated = self.mlp.intermediate, self.mlp.gated
        hs, start = [], 0
        for (count, _), c in zip(self.factors.groups, self.coefficients, strict=True):
            value = self._series(c, z[:, start:start + count])
            hs.append(value * z[:, inter + start:inter + start + count] if gated else value)
            start += count
        if start < inter:
            plain = self.mlp.activation.value(z[:, start:inter])
            plain = plain * z[:, inter + start:] if gated else plain
            hs.append(plain if self.plain_mask is None else plain * self.plain_mask)
        y = torch.cat(hs, 1) @ self.down.T
        if self.out_bias is not None:
            y = y + self.out_bias
        if self.record:
            self.energies.append(y.double().pow(2).sum(-1))
        return y.reshape(*shape[:-1], -1).to(x.dtype)


@dataclass
class Truncation:
    """The chosen truncation: per unit the kept order of each expanded channel and the plaintext kept."""

    keep: list[torch.Tensor]
    plain_keep: list[torch.Tensor]
    lam: float
    self_top1: float
    self_kl: float
    trials: list[dict] = field(default_factory=list)


def swap(model, units: list[str], modules: list[nn.Module]) -> list[nn.Module]:
    from packager.stages.audit.rebuild import swap_module

    return [swap_module(model, unit, module) for unit, module in zip(units, modules, strict=True)]


@torch.no_grad()
def _logprobs(model, ids: torch.Tensor) -> list[torch.Tensor]:
    return [model(input_ids=row.unsqueeze(0)).logits[0, :-1].float().log_softmax(-1) for row in ids]


def _agreement(reference: list[torch.Tensor], other: list[torch.Tensor]) -> tuple[float, float]:
    same = total = 0
    kl = 0.0
    for r, o in zip(reference, other, strict=True):
        same += int((r.argmax(-1) == o.argmax(-1)).sum())
        total += r.shape[0]
        kl += float((r.exp() * (r - o)).sum())
    return same / max(total, 1), max(kl / max(total, 1), 0.0)


class Attacker:
    """The attacker's evaluator on one model: `FastUnit`s of the units, its text, reference and tail energies.

    Built once (one recording pass over `ids`, tail energies per channel); `choose(λ)` gives the kept
    orders, `agreement(keeps)` measures them (the model's own units are put back after each pass).
    """

    @torch.no_grad()
    def __init__(self, model, units: list[str], released: list[ReleasedMLP], ids: torch.Tensor, *, dtype: str,
                 factors: list[arithmetic.Factors]) -> None:
        self.model, self.units, self.released, self.ids = model, units, released, ids
        self.factors = factors
        self.fast = [FastUnit(mlp, f) for mlp, f in zip(released, self.factors, strict=True)]
        self.rows = 2 if released[0].gated else 1
        self.group_cost = GROUP_COST.get(dtype, GROUP_COST["float32"])
        for unit in self.fast:
            unit.record = True
        originals = swap(model, units, self.fast)
        try:
            self.reference = _logprobs(model, ids)
        finally:
            swap(model, units, originals)
        self.tails, self.plains, self.scales = [], [], []
        for unit, mlp, f in zip(self.fast, released, self.factors, strict=True):
            unit.record = False
            x = torch.cat(unit.inputs)
            # the median token's ||y||²: a few tokens with massive activations (attention sinks) make the
            # mean tens to thousands of times the typical token's in some units of real models
            self.scales.append(float(torch.cat(unit.energies).median()))
            unit.inputs, unit.energies = [], []
            self.tails.append(arithmetic.tail_energies(mlp, f, x))
            self.plains.append(arithmetic.plain_energies(mlp, f, x))

    def choose(self, lam: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Kept orders (rounded up into groups) and kept plaintext channels of every unit at multiplier λ."""
        keeps, plain_keeps = [], []
        for t, p, scale, f in zip(self.tails, self.plains, self.scales, self.factors, strict=True):
            orders = f.orders
            k = arithmetic.select(t, orders, scale, lam, self.rows) if t.numel() else orders.clone()
            keeps.append(arithmetic.group_up(k, orders, groups=GROUPS, group_cost=self.group_cost))
            plain_keeps.append(p / (lam * scale) > 1.0 + self.rows)  # drop a plaintext channel when it costs less
        return keeps, plain_keeps

    def kept(self, keeps, plain_keeps) -> float:
        """Share of the Θ columns kept."""
        counts = [arithmetic.kept_columns(f, k, p) for f, k, p in zip(self.factors, keeps, plain_keeps, strict=True)]
        return sum(c for c, _ in counts) / max(sum(t for _, t in counts), 1)

    def installed(self, keeps, plain_keeps):
        """A context in which the model runs the truncation (its own units put back on exit)."""
        import contextlib

        @contextlib.contextmanager
        def context():
            for unit, k, pk in zip(self.fast, keeps, plain_keeps, strict=True):
                unit.set_keep(k, pk)
            originals = swap(self.model, self.units, self.fast)
            try:
                yield
            finally:
                swap(self.model, self.units, originals)
        return context()

    @torch.no_grad()
    def agreement(self, keeps, plain_keeps) -> tuple[float, float]:
        """(self top-1, mean KL(release || truncated)) on the attacker's text."""
        with self.installed(keeps, plain_keeps):
            return _agreement(self.reference, _logprobs(self.model, self.ids))

    def search(self, *, check=None, progress: Progress = None) -> Truncation:
        """Bisection on log λ for the largest λ meeting both bounds, then the held-out `check` (module doc)."""
        say = reporter(progress)
        trials, best = [], None
        lo, hi = LOG_LAMBDA
        for _ in range(BISECTION_STEPS):
            mid = (lo + hi) / 2
            keeps, plain_keeps = self.choose(math.exp(mid))
            top1, kl = self.agreement(keeps, plain_keeps)
            trial = {"log_lambda": mid, "self_top1": top1, "self_kl": kl,
                     "kept_fraction": self.kept(keeps, plain_keeps)}
            trials.append(trial)
            say(f"  truncation λ = e^{mid:.2f}: self top-1 {top1:.4f}, KL {kl:.2e}, Θ kept "
                f"{trial['kept_fraction']:.3f}")
            if top1 >= 1.0 - TOP1_DROP and kl <= KL_BOUND:
                lo, best = mid, trial
            else:
                hi = mid
        if best is None:  # nothing passes even at the smallest λ: the attacker keeps (almost) everything
            best = {"log_lambda": LOG_LAMBDA[0], "self_top1": 1.0, "self_kl": 0.0}
        lam = math.exp(best["log_lambda"])
        keeps, plain_keeps = self.choose(lam)
        if check is not None:
            for _ in range(MAX_BACKOFFS + 1):
                with self.installed(keeps, plain_keeps):
                    ok, figures = check()
                trials.append({"log_lambda": math.log(lam), "audit_check": ok, **figures,
                               "kept_fraction": self.kept(keeps, plain_keeps)})
                say(f"  held-out check at λ = e^{math.log(lam):.2f}: {'pass' if ok else 'fail'}")
                if ok:
                    break
                lam *= math.exp(-BACKOFF)
                keeps, plain_keeps = self.choose(lam)
        return Truncation(keeps, plain_keeps, lam, best["self_top1"], best["self_kl"], trials)


def truncated_modules(model, released: list[ReleasedMLP], spec: dict, truncation: Truncation) -> tuple[
        list[nn.Module], int, int]:
    """The truncated units as the runtime's `TaylorMLP`s in the model's dtype; (modules, Θ bytes kept, shipped)."""
    from packager.runtime.modeling_unswift import TaylorMLP, module_state

    parameter = next(model.parameters())
    modules, kept, shipped = [], 0, 0
    layers = []
    tensors = []
    size = parameter.element_size()
    for mlp, k, pk in zip(released, truncation.keep, truncation.plain_keep, strict=True):
        out, entry = arithmetic.truncate(mlp, k, pk)
        tensors.append({name: tensor.to(parameter.dtype) for name, tensor in out.items()})
        layers.append(entry)
        kept += out["theta"].numel() * size
        shipped += mlp.theta.numel() * size
        del out
    new_spec = {**spec, "layers": layers,
                "order": max([g["order"] for e in layers for g in e["groups"]] or [0])}
    config = types.SimpleNamespace(unswift=new_spec, hidden_size=int(released[0].theta.shape[0]))
    for index, out in enumerate(tensors):
        with torch.device("meta"):  # every parameter comes from `out`: no random init to throw away
            module = TaylorMLP(config, index)
        state = module_state(out)
        module.load_state_dict(state, strict=True, assign=True)
        modules.append(module.to(parameter.device).eval())
    return modules, kept, shipped


class PlainTimingMLP(nn.Module):
    """A recovered plain MLP in the model's dtype, computed as the source computes it (time it like one)."""

    def __init__(self, recovered: RecoveredMLP, activation, dtype: torch.dtype) -> None:
        super().__init__()
        self.activation = activation
        self.gate = nn.Linear(recovered.gate.shape[1], recovered.gate.shape[0],
                              bias=recovered.gate_bias is not None, dtype=dtype)
        self.up = None if recovered.up is None else nn.Linear(recovered.up.shape[1], recovered.up.shape[0],
                                                             bias=recovered.up_bias is not None, dtype=dtype)
        self.down = nn.Linear(recovered.down.shape[1], recovered.down.shape[0],
                              bias=recovered.down_bias is not None, dtype=dtype)
        with torch.no_grad():
            for layer, weight, bias in ((self.gate, recovered.gate, recovered.gate_bias),
                                        (self.up, recovered.up, recovered.up_bias),
                                        (self.down, recovered.down, recovered.down_bias)):
                if layer is None:
                    continue
                layer.weight.copy_(weight)
                if bias is not None:
                    layer.bias.copy_(bias)

    def forward(self, x):
        h = self.activation.value(self.gate(x))
        if self.up is not None:
            h = h * self.up(x)
        return self.down(h)


def time_slowdowns(model, units: list[str], contenders: dict[str, list[nn.Module] | None], *, source=None,
                   context: int, steps: int = TIMING_STEPS, warmup: int = TIMING_WARMUP) -> dict:
    """Decode seconds per step of the model with each set of units swapped in, interleaved, as `bench`.

    `contenders` maps a name to the unit modules to install (None: the model's own). The baseline is
    `source` (a loaded source model) when given, else the contender named "rebuild".
    """
    from packager.stages.bench import Contender, clock_for, measure_decode

    original = [model.get_submodule(unit) for unit in units]
    names, entries = [], []
    if source is not None:
        names.append("source")
        entries.append(Contender(source))
    for name, modules in contenders.items():
        if modules is None and name != "release":
            continue
        chosen = original if modules is None else modules
        names.append(name)
        entries.append(Contender(model, lambda chosen=chosen: swap(model, units, chosen)))
    device = str(next(model.parameters()).device)
    try:
        seconds = measure_decode(entries, vocab=int(model.config.vocab_size), device=device, batch=1,
                                 context=context, steps=steps, warmup=warmup)
    finally:
        swap(model, units, original)
    times = dict(zip(names, seconds, strict=True))
    base = times.get("source", times.get("rebuild"))
    return {"baseline": "source" if "source" in times else "kerckhoffs rebuild",
            "decode_ms": {k: v * 1e3 for k, v in times.items()},
            "slowdowns": {k: v / base for k, v in times.items() if k not in ("source",)},
            "context": context, "steps": steps, "clock": clock_for(device)[0],
            "threads": torch.get_num_threads() if device == "cpu" else 0}


def light(mlp: ReleasedMLP) -> tuple[ReleasedMLP, arithmetic.Factors]:
    """The unit's factors, and the unit without Θ (the attacker's evaluator needs only in_proj and factors)."""
    factors = arithmetic.factor(mlp)
    return dataclasses.replace(mlp, theta=mlp.theta[:, :0]), factors


def run(model, units: list[str], load, spec: dict, ids: torch.Tensor, *, check=None,
        rebuilt: dict[int, RecoveredMLP] | None = None, activation=None, source=None, context: int,
        steps: int = TIMING_STEPS, progress: Progress = None) -> dict:
    """The attack end to end: search, build the truncated units, time them (`steps` decode steps per
    model); the audit's JSON fields.

    `load(i)` gives unit i as released; each is read once (the truncated units are built from the same
    tensors the search factored).
    """
    say = reporter(progress)
    start = time.perf_counter()
    dtype = spec.get("dtype", "float32")
    loaded = [load(i) for i in range(len(units))]
    parts = [light(mlp) for mlp in loaded]
    released, factors = [p[0] for p in parts], [p[1] for p in parts]
    attacker = Attacker(model, units, released, ids, dtype=dtype, factors=factors)
    truncation = attacker.search(check=check, progress=progress)
    del attacker
    seconds = time.perf_counter() - start
    modules, kept, shipped = truncated_modules(model, loaded, spec, truncation)
    del loaded
    rebuild_modules = None
    if rebuilt is not None and len(rebuilt) == len(units):
        parameter = next(model.parameters())
        rebuild_modules = [PlainTimingMLP(rebuilt[i], activation, parameter.dtype).to(parameter.device)
                           for i in range(len(units))]
    say("timing the source, the release, the truncated release and the rebuild, interleaved")
    timing = None
    if source is not None or rebuild_modules is not None:
        timing = time_slowdowns(model, units, {"release": None, "truncated": modules, "rebuild": rebuild_modules},
                                source=source, context=context, steps=steps)
    keeps = torch.cat([k for k in truncation.keep if k.numel()] or [torch.zeros(0, dtype=torch.long)])
    quantiles = ({str(q): int(torch.quantile(keeps.double(), q)) for q in (0.1, 0.5, 0.9, 1.0)}
                 if keeps.numel() else {})
    slowdowns = (timing or {}).get("slowdowns", {})
    return {
        "kept_fraction": kept / max(shipped, 1),
        "theta_bytes": {"shipped": shipped, "kept": kept},
        "effective_slowdown": slowdowns.get("truncated"),
        "shipped_slowdown": slowdowns.get("release"),
        "rebuild_slowdown": slowdowns.get("rebuild"),
        "timing": timing,
        "self_top1": truncation.self_top1, "self_kl": truncation.self_kl,
        "top1_drop": TOP1_DROP, "kl_bound": KL_BOUND, "attacker_tokens": int(ids.numel()),
        "log_lambda": math.log(truncation.lam), "groups_max": GROUPS,
        "dropped_channels": int((keeps < 0).sum()), "expanded_channels": int(keeps.numel()),
        "plain_dropped": int(sum(int((~p).sum()) for p in truncation.plain_keep)),
        "kept_order_quantiles": quantiles,
        "rank1_residual_max": max((f.rank1_residual for f in factors), default=0.0),
        "search_seconds": round(seconds, 3), "trials": truncation.trials,
        "_modules": modules,
    }
