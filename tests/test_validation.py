"""The shared argument checks of ``latentgrad._validation``: what they accept and their errors."""

import math

import pytest
import torch

from latentgrad._validation import (
    check_dim,
    check_finite_scores,
    check_int,
    check_k,
    check_optional_int,
    check_structure_scores,
    check_tensor,
)


def test_check_tensor_names_the_argument_and_the_shape() -> None:
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        check_tensor([1.0], "x")
    with pytest.raises(TypeError, match="x must have a floating-point dtype"):
        check_tensor(torch.zeros(2, dtype=torch.long), "x")
    with pytest.raises(ValueError, match=r"at least 1 dimension.*a scalar.*at least one dimension"):
        check_tensor(torch.tensor(1.0), "x", min_dim=1)
    with pytest.raises(
        ValueError, match=r"x must have at least 2 dimension\(s\), got shape \(3,\)"
    ):
        check_tensor(torch.zeros(3), "x", min_dim=2)


def test_check_dim() -> None:
    x = torch.zeros(2, 3, 0)
    assert check_dim(-2, x) == 1
    with pytest.raises(TypeError, match="dim must be an int"):
        check_dim(1.0, x)
    with pytest.raises(ValueError, match="dim=3 is out of range"):
        check_dim(3, x)
    with pytest.raises(ValueError, match="dim=2 is an empty dimension"):
        check_dim(-1, x)


def test_counts_and_sizes() -> None:
    assert check_int(3, "n", minimum=1, maximum=3) == 3
    with pytest.raises(TypeError, match="n must be an int"):
        check_int(True, "n", minimum=0)
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        check_int(0, "n", minimum=1)
    with pytest.raises(ValueError, match=r"k must be at most the number of sets \(4\), got 5"):
        check_int(5, "k", minimum=1, maximum=4, of="the number of sets")
    assert check_optional_int(None, "k", minimum=1) is None
    assert check_optional_int(2, "k", minimum=1) == 2
    with pytest.raises(TypeError, match="k must be an int or None"):
        check_optional_int(1.5, "k", minimum=1)
    assert check_k(0, 3, minimum=0) == 0
    with pytest.raises(ValueError, match=r"k must be in \[1, n\]: k must be <= n = 3, got 4"):
        check_k(4, 3)
    with pytest.raises(ValueError, match="budget must be >= 1"):
        check_k(0, 3, "budget", of="d")


@pytest.mark.parametrize(
    ("bad", "structure_error", "finite_error"),
    [
        (math.nan, "s contains NaN", "s contains NaN; it must be finite"),
        (math.inf, r"s contains \+inf", r"s must be finite, got \+inf"),
        (-math.inf, None, r"s must be finite, got -inf \(no holes\)"),
    ],
)
def test_scores(bad: float, structure_error: str | None, finite_error: str) -> None:
    x = torch.zeros(2, 3)
    x[1, 2] = bad
    if structure_error is None:
        assert check_structure_scores(x, "s") is x  # -inf marks an absent item
    else:
        with pytest.raises(ValueError, match=structure_error):
            check_structure_scores(x, "s")
    with pytest.raises(ValueError, match=finite_error):
        check_finite_scores(x, "s", why="no holes")
    with pytest.raises(ValueError, match="s must have non-empty event dims"):
        check_finite_scores(torch.zeros(2, 0, 3), "s", event_dims=2)
