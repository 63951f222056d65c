"""The testing helpers: exact gradients, replicated gradients and the unbiasedness z-test."""

import pytest
import torch

import latentgrad as lg
from latentgrad.testing import (
    assert_unbiased,
    bonferroni_z,
    check_unbiased,
    exact_gradient,
    replicated_gradients,
)


def test_bonferroni_z_values():
    assert bonferroni_z(0.05, 1) == pytest.approx(1.959964, abs=1e-5)
    assert bonferroni_z(1e-5, 10) > bonferroni_z(1e-5, 1)
    with pytest.raises(ValueError, match="alpha"):
        bonferroni_z(0.0, 3)


@pytest.mark.stat
def test_passes_unbiased_and_fails_biased_samples():
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(5000, 10, generator=g, dtype=torch.float64) * 2 + 3
    assert_unbiased(samples, torch.full((10,), 3.0, dtype=torch.float64))
    # a bias of 0.5 standard deviations is 35 standard errors at n = 5000
    with pytest.raises(AssertionError, match="biased"):
        assert_unbiased(samples, torch.full((10,), 2.0, dtype=torch.float64))


@pytest.mark.stat
def test_false_failure_rate_is_below_alpha():
    # 2000 unbiased experiments at alpha = 1e-2: the failure count is Binomial(2000, <=1e-2);
    # more than 45 failures has probability < 1e-6 under the null.
    g = torch.Generator().manual_seed(1)
    failures = sum(
        not check_unbiased(
            torch.randn(200, 5, generator=g, dtype=torch.float64), torch.zeros(5), alpha=1e-2
        ).passed
        for _ in range(2000)
    )
    assert failures <= 45


def test_zero_variance_coordinates_compare_exactly():
    samples = torch.ones(100, 2, dtype=torch.float64)
    assert check_unbiased(samples, torch.ones(2, dtype=torch.float64)).passed
    assert not check_unbiased(samples, torch.tensor([1.0, 1.001], dtype=torch.float64)).passed


def test_shape_checks():
    with pytest.raises(ValueError, match="n >= 2"):
        check_unbiased(torch.zeros(1, 3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"expected\.shape"):
        check_unbiased(torch.zeros(10, 3), torch.zeros(2))


def test_replicated_gradients_are_per_replicate():
    param = torch.tensor([1.0, 2.0], dtype=torch.float64)
    scale = torch.arange(1.0, 7.0, dtype=torch.float64)
    grads = replicated_gradients(
        lambda rep: (rep**2).sum(-1) * scale[: rep.shape[0]], param, 6, chunk_size=4
    )
    expected = torch.cat([scale[:4], scale[:2]]).unsqueeze(-1) * 2 * param
    torch.testing.assert_close(grads, expected)


def test_exact_gradient_by_enumeration():
    logits = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64, requires_grad=True)
    (g,) = exact_gradient(lambda: lg.Categorical(logits=logits), lambda z: z[..., 2], [logits])
    p = torch.softmax(logits.detach(), -1)
    torch.testing.assert_close(g, p[2] * (torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) - p))
