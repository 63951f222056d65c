"""Statistical assertions with a fixed, documented false-failure rate."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

#: Default family-wise false-failure rate of :func:`assert_unbiased` (Bonferroni-corrected).
DEFAULT_ALPHA = 1e-5


@dataclass
class UnbiasedCheck:
    """Outcome of a per-coordinate z-test of ``mean(samples) == expected``.

    Attributes:
        passed: whether every coordinate is within its tolerance.
        z_crit: the Bonferroni-corrected two-sided critical value.
        max_abs_z: the largest ``|mean - expected|`` in standard errors over coordinates, with the
            rounding allowance counted as part of the standard error (so a zero-variance
            coordinate that is off by rounding only does not show a huge z).
        mean, expected, standard_error, tolerance: per coordinate (flattened).
        num_samples: number of independent samples.
    """

    passed: bool
    z_crit: float
    max_abs_z: float
    mean: Tensor
    expected: Tensor
    standard_error: Tensor
    tolerance: Tensor
    num_samples: int

    def summary(self, k: int = 5) -> str:
        excess = (self.mean - self.expected).abs() - self.tolerance
        worst = torch.topk(excess, min(k, excess.numel())).indices
        rows = [
            f"  [{int(i)}] mean={self.mean[i]:.6g} expected={self.expected[i]:.6g} "
            f"se={self.standard_error[i]:.3g} tol={self.tolerance[i]:.3g}"
            for i in worst
        ]
        return (
            f"{self.num_samples} samples, {self.mean.numel()} coordinates, "
            f"z_crit={self.z_crit:.2f}, max |z|={self.max_abs_z:.2f}\n" + "\n".join(rows)
        )


def bonferroni_z(alpha: float, num_tests: int) -> float:
    """Two-sided critical value of a normal z-test at family-wise level ``alpha`` over ``num_tests``."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    p = torch.tensor(1 - alpha / (2 * max(num_tests, 1)), dtype=torch.float64)
    return float(torch.special.ndtri(p))


def check_unbiased(
    samples: Tensor, expected: Tensor, *, alpha: float = DEFAULT_ALPHA
) -> UnbiasedCheck:
    """Per-coordinate z-test that independent ``samples`` have mean ``expected``.

    The tolerance of each coordinate is ``z_crit * sd / sqrt(n)`` with ``z_crit`` Bonferroni-
    corrected over the coordinates, plus a rounding allowance (64 ulps of the largest magnitude
    over all coordinates) so that zero-variance coordinates compare equal up to floating-point
    error.
    Under the null (an unbiased estimator) the probability that any coordinate fails is at most
    ``alpha`` up to the normal approximation of the sample mean; keep ``n >= 1000``.

    Args:
        samples: shape ``(n,) + shape``, independent draws of the estimator.
        expected: shape ``shape``, the exact value.
        alpha: family-wise false-failure rate.
    """
    if samples.dim() < 1 or samples.shape[0] < 2:
        raise ValueError(
            f"samples must have shape (n, ...) with n >= 2, got {tuple(samples.shape)}"
        )
    if samples.shape[1:] != expected.shape:
        raise ValueError(
            f"samples.shape[1:] = {tuple(samples.shape[1:])} must equal "
            f"expected.shape = {tuple(expected.shape)}"
        )
    n = samples.shape[0]
    x = samples.detach().to(torch.float64).reshape(n, -1)
    e = expected.detach().to(torch.float64).reshape(-1).to(x.device)
    mean = x.mean(0)
    se = x.std(0, unbiased=True) / math.sqrt(n)
    z_crit = bonferroni_z(alpha, x.shape[1])
    eps = torch.finfo(samples.dtype).eps
    # Rounding error of a deterministic estimate scales with the whole gradient (intermediate sums
    # cancel), not with the single coordinate, so the allowance uses the global magnitude.
    rounding = 64 * eps * (x.abs().amax() + e.abs().amax()) + 1e-300
    tol = z_crit * se + rounding
    err = (mean - e).abs()
    return UnbiasedCheck(
        passed=bool((err <= tol).all()),
        z_crit=z_crit,
        max_abs_z=float((err * z_crit / tol).max()),
        mean=mean,
        expected=e,
        standard_error=se,
        tolerance=tol,
        num_samples=n,
    )


def assert_unbiased(
    samples: Tensor, expected: Tensor, *, alpha: float = DEFAULT_ALPHA, name: str = "estimator"
) -> UnbiasedCheck:
    """Raise ``AssertionError`` unless :func:`check_unbiased` passes; return its result.

    Example:
        >>> import torch
        >>> from latentgrad.testing import assert_unbiased
        >>> g = torch.Generator().manual_seed(0)
        >>> _ = assert_unbiased(torch.randn(4000, 3, generator=g) + 1.0, torch.ones(3))
    """
    result = check_unbiased(samples, expected, alpha=alpha)
    if not result.passed:
        raise AssertionError(f"{name} is biased (or alpha too small):\n{result.summary()}")
    return result
