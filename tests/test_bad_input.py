"""Every public family, estimator and mapping rejects bad input with an error naming the argument.

Driven by :func:`latentgrad.testing.bad_inputs.bad_inputs`, which generates the cases from the
registry of examples (NaN, infinities, wrong shape, dtype and type, empty events, ``k`` and
``tau`` out of range, values outside the support, ``meta``/``cpu`` device mixes).
"""

import collections

import pytest

from latentgrad.testing.bad_inputs import BadInput, bad_inputs, check_bad_input

CASES = bad_inputs()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_raises_an_error_naming_the_argument(case: BadInput) -> None:
    check_bad_input(case)


def test_every_kind_of_bad_input_is_tried_on_every_family() -> None:
    kinds = collections.defaultdict(set)
    for case in CASES:
        kinds[case.entry].add(case.kind)
    families = [
        "Categorical", "Bernoulli", "SparsemaxCategorical", "TopKSparsemax", "KSubset",
        "PlackettLuce", "SpanningTree", "Arborescence", "BinaryTree", "Matching",
        "RelaxedCategorical", "RelaxedBernoulli", "SparseMAP",
    ]  # fmt: skip
    for family in families:
        assert {"nan", "dtype", "type", "shape", "empty"} <= kinds[family], family
        assert {"support", "shape", "type", "device"} <= kinds[f"{family}.log_prob"], family
    assert {"k"} <= kinds["KSubset"] and {"tau"} <= kinds["RelaxedCategorical"]
    assert {"tau"} <= kinds["GumbelSoftmax"] and {"k"} <= kinds["SumAndSample"]
    assert {"nan", "dtype", "type", "shape", "empty", "range", "k"} <= kinds["sparsemax"]
    assert len(CASES) > 500


def test_check_bad_input_reports_what_is_wrong() -> None:
    def no_error() -> None:
        return None

    def wrong_type() -> None:
        raise RuntimeError("index 5 is out of bounds")

    def unnamed() -> None:
        raise ValueError("something is wrong")

    for call, message in [
        (no_error, "no error"),
        (wrong_type, "got RuntimeError"),
        (unnamed, "does not name value"),
    ]:
        with pytest.raises(AssertionError, match=message):
            check_bad_input(BadInput("x/y", "x", "y", call, "value"))
    # The argument must appear as a word: "values" or "max_value" do not name "value".
    with pytest.raises(AssertionError, match="does not name"):
        check_bad_input(BadInput("x/y", "x", "y", lambda: int("max_value"), "value"))
