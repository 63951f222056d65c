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


def chi_square_pvalue(counts: Tensor, probs: Tensor, *, min_expected: float = 5.0) -> float:
    """p-value of Pearson's chi-square goodness-of-fit test of ``counts`` against ``probs``.

    Categories whose expected count is below ``min_expected`` are pooled into one (and dropped
    if the pool is still below it), so the chi-square approximation holds.

    Args:
        counts: observed counts per category, shape ``(C,)``.
        probs: the null probabilities, shape ``(C,)``, summing to 1.

    Example:
        >>> import torch
        >>> from latentgrad.testing.stats import chi_square_pvalue
        >>> round(chi_square_pvalue(torch.tensor([50, 50]), torch.tensor([0.5, 0.5])), 3)
        1.0
    """
    c = counts.detach().to(torch.float64).reshape(-1)
    p = probs.detach().to(torch.float64).reshape(-1).to(c.device)
    if c.shape != p.shape:
        raise ValueError(f"counts and probs must have the same size, got {c.shape} and {p.shape}")
    n = float(c.sum())
    expected = n * p
    small = expected < min_expected
    obs = c[~small]
    exp = expected[~small]
    if bool(small.any()) and float(expected[small].sum()) >= min_expected:
        obs = torch.cat([obs, c[small].sum().reshape(1)])
        exp = torch.cat([exp, expected[small].sum().reshape(1)])
    elif bool(small.any()):
        # the pooled rare categories are tested not to be observed too often
        if float(c[small].sum()) > max(min_expected, 10 * float(expected[small].sum())):
            return 0.0
    df = obs.numel() - 1
    if df < 1:
        return 1.0
    stat = ((obs - exp) ** 2 / exp).sum()
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))


def ks_critical_value(n: int, m: int, alpha: float) -> float:
    """Asymptotic critical value of the two-sample Kolmogorov-Smirnov statistic at level ``alpha``.

    ``sqrt(-log(alpha / 2) / 2) * sqrt((n + m) / (n m))``; conservative for moderate sizes.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def ks_statistic(x: Tensor, y: Tensor) -> Tensor:
    """Two-sample Kolmogorov-Smirnov statistics, one per column.

    Args:
        x: samples ``(n, C)``; y: samples ``(m, C)`` (``+inf`` allowed: it sorts last).

    Returns:
        ``sup_t |F_x(t) - F_y(t)|`` per column, shape ``(C,)``.
    """
    x = x.detach().to(torch.float64)
    y = y.detach().to(torch.float64)
    n, m = x.shape[0], y.shape[0]
    pooled = torch.cat([x, y], 0)
    order = pooled.argsort(dim=0, stable=True)
    sorted_vals = pooled.gather(0, order)
    step = torch.where(order < n, 1.0 / n, -1.0 / m)
    diff = step.cumsum(0)
    # Only compare at the last of each run of equal values (ties move together).
    last = torch.ones_like(sorted_vals, dtype=torch.bool)
    last[:-1] = sorted_vals[1:] != sorted_vals[:-1]
    return torch.where(last, diff.abs(), torch.zeros_like(diff)).amax(0)
