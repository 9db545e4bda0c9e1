"""packager.stages.budget: the full budget is exactly what every stage does by default."""

from __future__ import annotations

import pytest

from packager.errors import UsageError
from packager.stages import bench, evaluate
from packager.stages.audit import truncation
from packager.stages.audit.report import LearningBudget
from packager.stages.audit.texts import TRUNCATION_SEQ_LEN
from packager.stages.budget import BUDGETS, budget_named
from packager.stages.calibrate import DEFAULT_TOKENS
from packager.stages.plan.coverage import SELECTION_SEQ_LEN, SELECTION_TOKENS


def test_full_budget_is_every_stages_default():
    full = BUDGETS["full"]
    assert full.calibration_tokens == DEFAULT_TOKENS and full.eval_tokens == evaluate.DEFAULT_EVAL_TOKENS
    assert full.greedy_tokens == evaluate.GREEDY_TOKENS and full.bench_steps == bench.DEFAULT_STEPS
    assert truncation.TIMING_STEPS == bench.DEFAULT_STEPS  # the audit times as the bench does
    assert (full.learning_steps, full.attacker_tokens) == (LearningBudget().steps, LearningBudget().tokens)
    assert full.sample_length is None and LearningBudget().sample_length is None  # each stage's own length
    assert full.selection_tokens == SELECTION_TOKENS


def test_quick_budget_is_smaller_everywhere_and_unknown_names_are_refused():
    quick, full = BUDGETS["quick"].to_json(), BUDGETS["full"].to_json()
    assert all(quick[key] < full[key] for key in full if key not in ("name", "sample_length"))
    assert quick["sample_length"] < min(evaluate.DEFAULT_SEQ_LEN, TRUNCATION_SEQ_LEN, SELECTION_SEQ_LEN)
    with pytest.raises(UsageError, match="quick"):
        budget_named("tiny")
