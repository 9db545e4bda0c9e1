"""Leak attribution: recipient fingerprints in the weights, and their trace (pure tensor mathematics).

Every recipient's copy carries a secret-keyed Gaussian pattern Δ = S ⊙ G added to each decoder
projection before the TaylorMLP transform; a suspect model is aligned to the source (every exact
function-preserving reparametrisation undone), and its residual is correlated with each recipient's
pattern (a matched filter whose null distribution is exactly N(0, 1)). docs/THREAT_MODEL.md says what
it survives and what erases it; docs/BENCHMARKS.md the measurements.

Modules: `keys` (HMAC derivations, patterns), `roles` (which tensors carry a pattern, under which
layout-independent name), `profile` (where the fidelity budget is spent), `embed` (adding a pattern),
`assignment` (matchings), `alignment` (undoing reparametrisations), `score` (the matched filter and
its p-values), `trace` (one suspect against a ledger, layer by layer). No file I/O here.
"""
