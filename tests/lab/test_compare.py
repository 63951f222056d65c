"""`latentgrad compare` measures a multi-sample estimator (VIMCO) against the gradient of its own
objective, the K-sample bound, where its K-tuples can be enumerated, and says n/a elsewhere."""

from __future__ import annotations

import json

import torch

from latentgrad.estimators import VIMCO
from latentgrad.lab.compare import (
    EXPECTATION,
    MAX_BOUND_TUPLES,
    compare,
    exact_bound_gradient,
    format_table,
    make_problem,
)
from latentgrad.lab.registry import ESTIMATORS
from latentgrad.testing import check_unbiased
from latentgrad.testing.problems import exact_problem_gradient, replicated_and_exact


def test_vimco_is_measured_against_its_bound_or_not_at_all() -> None:
    chosen = {name: ESTIMATORS[name] for name in ("sf-loo", "vimco")}
    rows = compare(chosen, families=("categorical", "bernoulli"), replicates=1000)
    by = {(r.problem, r.estimator): r for r in rows}
    assert [r.objective for r in rows if r.estimator == "sf-loo"] == [EXPECTATION] * 2
    cat, bits = by["categorical", "vimco"], by["bernoulli", "vimco"]
    assert cat.objective == bits.objective == "5-sample bound"
    # 10^5 five-tuples of the categorical's support: enumerated, and unbiased against them.
    assert cat.relative_bias is not None and cat.relative_bias < 0.05 and cat.biased is False
    # 256^5 tuples of 8 bits: no exact gradient, no verdict.
    assert 256**5 > MAX_BOUND_TUPLES
    assert (bits.relative_bias, bits.max_bias_z, bits.biased) == (None, None, None)
    assert bits.mean_variance > 0 and bits.loss_evals == 5

    table = format_table(rows)
    lines = table.splitlines()
    vimco_bits = next(line for line in lines if line.startswith("bernoulli    vimco*"))
    assert vimco_bits.split()[2:5] == ["n/a", "n/a", "n/a"]
    assert (
        next(line for line in lines if line.startswith("categorical  sf-loo ")).split()[4] == "no"
    )
    assert sum(line.startswith("* vimco: bias against") for line in lines) == 1
    assert "5-sample bound" in table
    assert json.loads(json.dumps(bits.as_dict()))["relative_bias"] is None


def test_the_bound_is_another_target_than_the_expectation() -> None:
    """The same VIMCO estimates pass against the bound's exact gradient and fail against
    E[loss]'s: the comparison would call it biased if it used the wrong target."""
    torch.manual_seed(0)
    problem = make_problem("categorical")
    grads, exact_expectation_grad = replicated_and_exact(problem, VIMCO(3), 4000)
    bound = exact_bound_gradient(problem, 3)
    assert bound is not None
    assert check_unbiased(grads, bound).passed
    assert not check_unbiased(grads, exact_expectation_grad).passed
    torch.testing.assert_close(exact_bound_gradient(problem, 1), exact_problem_gradient(problem))
    assert exact_bound_gradient(make_problem("factorized"), 5) is None  # 64^5 tuples
