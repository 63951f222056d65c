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


def test_meta_tensors_skip_the_data_checks() -> None:
    from latentgrad._validation import check_bernoulli_logits, check_scores, is_meta

    meta = torch.zeros(2, 3, device="meta")
    assert is_meta(meta) and not is_meta(torch.zeros(2)) and not is_meta([1.0])
    for check in (
        check_scores,
        check_structure_scores,
        check_finite_scores,
        check_bernoulli_logits,
    ):
        assert check(meta, "scores") is meta
    with pytest.raises(TypeError, match="scores"):  # metadata is still checked
        check_scores(torch.zeros(2, dtype=torch.long, device="meta"), "scores")
    with pytest.raises(ValueError, match="non-empty"):
        check_finite_scores(torch.zeros(2, 0, device="meta"), "scores")


def test_check_sample_and_validate_args() -> None:
    from torch.distributions import Distribution

    from latentgrad._validation import check_nonnegative, check_sample, resolve_validate_args

    like = torch.zeros(())
    batch, event = torch.Size([2]), torch.Size([3])
    assert check_sample(torch.zeros(4, 2, 3), batch, event, like) == (4, 2)
    assert check_sample(torch.zeros(4, 1, 3), batch, event, like) == (4, 1)  # broadcasts
    with pytest.raises(TypeError, match=r"value must be a torch\.Tensor"):
        check_sample([0.0], batch, event, like)
    with pytest.raises(ValueError, match="value must end with the event shape"):
        check_sample(torch.zeros(2, 4), batch, event, like)
    with pytest.raises(ValueError, match="value must have shape sample_shape"):
        check_sample(torch.zeros(3, 3), batch, event, like)
    with pytest.raises(ValueError, match="value is on device meta"):
        check_sample(torch.zeros(2, 3, device="meta"), batch, event, like)
    assert resolve_validate_args(None) is bool(Distribution._validate_args)
    assert resolve_validate_args(False) is False
    with pytest.raises(TypeError, match="validate_args"):
        resolve_validate_args(1)
    assert check_nonnegative(0, "tol") == 0.0
    with pytest.raises(ValueError, match="tol must be finite and >= 0"):
        check_nonnegative(-1e-3, "tol")
    with pytest.raises(TypeError, match="tol"):
        check_nonnegative("1", "tol")


def test_check_dim_names_the_tensor() -> None:
    with pytest.raises(
        ValueError, match=r"dim=1 is an empty dimension of scores \(shape \(2, 0\)\)"
    ):
        check_dim(1, torch.zeros(2, 0), of="scores")
    with pytest.raises(ValueError, match="out of range for x"):
        check_dim(5, torch.zeros(2, 3))
