"""`--coverage auto`: the largest coverage whose measured top-1 agreement meets `--min-top1`.

Candidates are tried from the largest down on held-out text (eval prompts, a seed of its own), with
each layer's MLP swapped in memory for the runtime's own `TaylorMLP`, so what is measured is what
users will run.
"""

from __future__ import annotations

import torch

from packager.formats.checkpoint import Checkpoint
from packager.formats.stats import Stats
from packager.maths.transform import LayerPlan, boost_channels, select_channels
from packager.progress import Progress, reporter
from packager.stages.budget import Budget
from packager.stages.evaluate import compare_to_logits, reference_logits
from packager.stages.options import ConvertOptions
from packager.stages.swap import install_release_mlps, restore
from packager.stages.tensors import layer_tensors, release_spec
from packager.stages.text import sample_text

CANDIDATES = (1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)
SELECTION_TOKENS = 2048
SELECTION_SEED_OFFSET = 500
SELECTION_SEQ_LEN = 256


def _source_key(checkpoint: Checkpoint) -> str:
    import json

    return json.dumps(checkpoint.file_digests(), sort_keys=True)


def choose_coverage(checkpoint: Checkpoint, model, plans: list[LayerPlan], stats: Stats, options: ConvertOptions,
                    secret: bytes, *, progress: Progress = None, budget: Budget | None = None
                    ) -> tuple[float, list[dict]]:
    """Try candidates from the largest; return the first that meets `options.min_top1` (else the best seen).

    Each candidate's release tensors are built in float32, exactly as `convert` would write them, and
    swapped into `model` (the source, float32) through the runtime's own modules.
    """
    say = reporter(progress)
    min_top1, seed = options.min_top1, stats.seed
    tokenizer = checkpoint.load_tokenizer()
    tokens = budget.selection_tokens if budget is not None else SELECTION_TOKENS
    seq_len = min(SELECTION_SEQ_LEN, (budget and budget.sample_length) or SELECTION_SEQ_LEN)
    say(f"coverage auto: sampling {tokens} selection tokens from the model (seed {seed + SELECTION_SEED_OFFSET})")
    text = sample_text(model, tokenizer, kind="eval", tokens=tokens, seq_len=seq_len,
                       seed=seed + SELECTION_SEED_OFFSET, cache_key=f"{_source_key(checkpoint)}/float32",
                       progress=say)
    reference = reference_logits(model, text.ids)  # before any MLP is swapped
    trials: list[dict] = []
    fit = "taylor" if plans[0].fit.basis == "monomial" else "weighted"
    for coverage in CANDIDATES:
        masks = select_channels(plans, coverage, fit)
        boosts = boost_channels(plans, masks, options.order)
        spec = release_spec(checkpoint, stats, options, masks, plans, secret, "float32", boosts)
        layers = {i: layer_tensors(checkpoint, plans, masks, options, secret, i, boosts, dtype=torch.float32)
                  for i in range(len(plans))}  # in float32 as convert writes it: one rounding, not two
        originals = install_release_mlps(model, checkpoint.adapter, spec, layers)
        try:
            agreement = compare_to_logits(reference, model, text.ids)
        finally:
            restore(originals)
        trials.append({"coverage": coverage, "top1_agreement": agreement.top1_agreement,
                       "kl_mean": agreement.kl_mean, "tokens": agreement.tokens, "text_source": text.source})
        say(f"coverage {coverage:.2f}: top-1 agreement {agreement.top1_agreement:.4f} (needs {min_top1})")
        if agreement.top1_agreement >= min_top1:
            return coverage, trials
    best = max(trials, key=lambda t: (t["top1_agreement"], t["coverage"]))
    return best["coverage"], trials
