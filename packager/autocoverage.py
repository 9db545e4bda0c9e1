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
from packager.evaluate import compare_to_logits, reference_logits
from packager.text import sample_text
from packager.transform import LayerPlan, select_channels

CANDIDATES = (1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)
SELECTION_TOKENS = 2048
SELECTION_SEED_OFFSET = 500


@torch.no_grad()
def swap_in_release_mlps(model, checkpoint: Checkpoint, spec: dict, layers: dict[int, dict[str, torch.Tensor]]
                         ) -> list:
    """Install the runtime's series modules (dense MLPs and experts alike) holding `layers`' tensors.

    Returns what `restore_mlps` needs to put the source modules back.
    """
    from packager.runtime.modeling_unswift import install_taylor_mlps, module_state

    config = types.SimpleNamespace(unswift=spec, hidden_size=model.config.hidden_size)
    replaced = install_taylor_mlps(_parents(model, checkpoint), config)
    state = module_state({name: tensor.float() for unit in layers.values() for name, tensor in unit.items()})
    missing = set(state) - set(model.state_dict())
    if missing:
        raise RuntimeError(f"release tensors without a module in the model: {sorted(missing)[:3]}")
    model.load_state_dict(state, strict=False, assign=True)
    model.to(next(iter(model.parameters())).device)
    return replaced


def restore_mlps(model, checkpoint: Checkpoint, replaced: list) -> None:
    for module, attribute, original in replaced:
        setattr(module, attribute, original)


def _parents(model, checkpoint: Checkpoint) -> list:
    root = model
    for part in checkpoint.adapter.layers_prefix.split("."):
        root = getattr(root, part)
    return list(root)


def _source_key(checkpoint: Checkpoint) -> str:
    import json

    return json.dumps(checkpoint.file_digests(), sort_keys=True)


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
                       seed=seed + SELECTION_SEED_OFFSET, cache_key=f"{_source_key(checkpoint)}/float32")
    reference = reference_logits(model, text.ids)  # before any MLP is swapped
    trials: list[dict] = []
    fit = "taylor" if plans[0].fit.basis == "monomial" else "weighted"
    for coverage in CANDIDATES:
        masks = select_channels(plans, coverage, fit)
        spec = build_spec(masks)
        layers = {i: build_layer(masks, i) for i in range(len(plans))}
        originals = swap_in_release_mlps(model, checkpoint, spec, layers)
        try:
            agreement = compare_to_logits(reference, model, text.ids)
        finally:
            restore_mlps(model, checkpoint, originals)
        trials.append({"coverage": coverage, "top1_agreement": agreement.top1_agreement,
                       "kl_mean": agreement.kl_mean, "tokens": agreement.tokens, "text_source": text.source})
        say(f"coverage {coverage:.2f}: top-1 agreement {agreement.top1_agreement:.4f} (needs {min_top1})")
        if agreement.top1_agreement >= min_top1:
            return coverage, trials
    best = max(trials, key=lambda t: (t["top1_agreement"], t["coverage"]))
    return best["coverage"], trials
