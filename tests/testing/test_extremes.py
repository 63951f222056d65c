"""Tests of the extreme-logits check: it passes a sound estimator and catches a non-finite one."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import latentgrad as lg
from latentgrad.estimators import Estimator, LatentDistribution, LossFn, ScoreFunction
from latentgrad.testing.extremes import (
    FLOAT_DTYPES,
    check_finite_on_extreme_logits,
    extreme_unit_cases,
)


class _NaiveLogProb(Estimator):
    """Score function through ``log(softmax)``: ``log 0 = -inf`` at ``-inf`` logits."""

    requires = ("has_logits",)

    def _estimate(
        self, dist: LatentDistribution, loss_fn: LossFn, context: Tensor | None
    ) -> lg.Estimate:
        z = dist.sample((1,))
        losses = loss_fn(z)
        logits: Tensor = dist.logits  # type: ignore[union-attr]
        log_q = (z * torch.log(torch.softmax(logits, -1))).flatten(2).sum(-1)
        per_sample = losses + losses.detach() * log_q
        return lg.Estimate.from_terms(per_sample, losses=losses, loss_evals=1)


def test_cases_are_valid_and_named() -> None:
    cases = extreme_unit_cases()
    assert len({c.name for c in cases}) == len(cases) == 8
    for case in cases:
        q = case.make(case.logits)
        assert torch.isfinite(q.log_prob(q.sample()).float()).all(), case.name
    assert [c.name for c in extreme_unit_cases(["units-1e4", "one-category"])] == [
        "units-1e4",
        "one-category",
    ]
    with pytest.raises(ValueError, match="names"):
        extreme_unit_cases(["no-such-case"])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_a_sound_estimator_passes(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    check_finite_on_extreme_logits(lambda: ScoreFunction(), dtype)
    check_finite_on_extreme_logits(lambda: ScoreFunction(), dtype, with_log_prob=True)


def test_a_non_finite_gradient_is_caught_and_named() -> None:
    torch.manual_seed(0)
    cases = extreme_unit_cases(["all-inf-but-one"])
    with pytest.raises(AssertionError, match=r"all-inf-but-one in torch\.float32"):
        check_finite_on_extreme_logits(_NaiveLogProb, torch.float32, cases)
