"""`--coverage auto`: the largest coverage whose measured top-1 agreement meets `--min-top1`.

Candidates are tried from the largest down on held-out text (eval prompts, a seed of its own), with
each layer's MLP swapped in memory for the runtime's own `TaylorMLP`, so what is measured is what
users will run.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch

from packager.checkpoint import Checkpoint
from packager.evaluate import compare_logits
from packager.text import sample_text
from packager.transform import LayerPlan, select_channels

CANDIDATES = (1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)
SELECTION_TOKENS = 4096
SELECTION_SEED_OFFSET = 500


@torch.no_grad()
def swap_in_release_mlps(model, checkpoint: Checkpoint, spec: dict, layers: dict[int, dict[str, torch.Tensor]]
                         ) -> list:
    """Replace the source model's MLPs by runtime TaylorMLPs holding `layers`; returns the originals."""
    from packager.runtime.modeling_unswift import TaylorMLP

    config = types.SimpleNamespace(unswift=spec, hidden_size=model.config.hidden_size)
    modules = checkpoint.adapter.mlp_modules(model)
    originals = list(modules)
    parents = _parents(model, checkpoint)
    for index, parent in enumerate(parents):
        mlp = TaylorMLP(config, index)
        state = {name.removeprefix(checkpoint.adapter.mlp_prefix(index)): t.float()
                 for name, t in layers[index].items()}
        mlp.load_state_dict(state, strict=True)
        setattr(parent, checkpoint.adapter.mlp, mlp.to(next(model.parameters()).device))
    return originals


def restore_mlps(model, checkpoint: Checkpoint, originals: list) -> None:
    for parent, mlp in zip(_parents(model, checkpoint), originals, strict=True):
        setattr(parent, checkpoint.adapter.mlp, mlp)


def _parents(model, checkpoint: Checkpoint) -> list:
    root = model
    for part in checkpoint.adapter.layers_prefix.split("."):
        root = getattr(root, part)
    return list(root)


def choose_coverage(
    checkpoint: Checkpoint, model, plans: list[LayerPlan], *, min_top1: float, seed: int,
    build_spec: Callable[[list[torch.Tensor]], dict],
    build_layer: Callable[[list[torch.Tensor], int], dict[str, torch.Tensor]],
    progress: Callable[[str], None] | None = None,
) -> tuple[float, list[dict]]:
    """Try candidates from the largest; return the first that meets `min_top1` (else the best seen)."""
    say = progress or (lambda _msg: None)
    tokenizer = checkpoint.load_tokenizer()
    text = sample_text(model, tokenizer, kind="eval", tokens=SELECTION_TOKENS, seq_len=256,
                       seed=seed + SELECTION_SEED_OFFSET)
    reference = _ReferenceLogits(model)
    trials: list[dict] = []
    fit = "taylor" if plans[0].fit.basis == "monomial" else "weighted"
    for coverage in CANDIDATES:
        masks = select_channels(plans, coverage, fit)
        spec = build_spec(masks)
        layers = {i: build_layer(masks, i) for i in range(len(plans))}
        originals = swap_in_release_mlps(model, checkpoint, spec, layers)
        try:
            agreement = compare_logits(reference, model, text.ids)
        finally:
            restore_mlps(model, checkpoint, originals)
        trials.append({"coverage": coverage, "top1_agreement": agreement.top1_agreement,
                       "kl_mean": agreement.kl_mean, "tokens": agreement.tokens, "text_source": text.source})
        say(f"coverage {coverage:.2f}: top-1 agreement {agreement.top1_agreement:.4f} (needs {min_top1})")
        if agreement.top1_agreement >= min_top1:
            return coverage, trials
    best = max(trials, key=lambda t: (t["top1_agreement"], t["coverage"]))
    return best["coverage"], trials


class _ReferenceLogits(torch.nn.Module):
    """Caches the source model's logits per batch so each candidate costs one release forward only."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.cache: dict[tuple, torch.Tensor] = {}
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, input_ids: torch.Tensor):
        key = (input_ids.shape, hash(input_ids.cpu().numpy().tobytes()))
        if key not in self.cache:
            self.cache[key] = self.model(input_ids=input_ids).logits
        return types.SimpleNamespace(logits=self.cache[key])
