"""packager.stages.text: the nucleus filter keeps exactly the set transformers' top-p warper keeps."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from packager.stages.text import Nucleus


@pytest.mark.parametrize("spread", [30.0, 3.0, 0.3, 0.01])  # peaked ... nearly flat (wider than the head)
def test_nucleus_keeps_the_warpers_set(spread):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 5000, generator=generator) * spread
    scores[0, 7] = 40.0  # one row whose nucleus is a single token
    expected = TopPLogitsWarper(0.95)(None, scores.clone())
    got = Nucleus(0.95, head=256)(None, scores.clone())
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    kept = torch.isfinite(got)
    assert torch.equal(got[kept], scores[kept])  # kept logits are untouched
    assert bool((kept.sum(-1) >= 1).all())


def test_nucleus_falls_back_to_a_full_sort_only_for_wide_rows():
    scores = torch.zeros(2, 1000)
    scores[0, :3] = 50.0  # nucleus of 3 tokens, inside the head
    kept = torch.isfinite(Nucleus(0.95, head=16)(None, scores))
    assert kept[0].sum() == 3 and kept[1].sum() == 950  # the flat row: 95 % of a uniform 1,000
