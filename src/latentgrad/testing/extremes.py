"""Extreme but valid logits of categorical and bit units, and the check that an estimator stays
finite on them in every floating dtype.

"Extreme" is what training reaches: logits of ``+-1e4``, every category but one at ``-inf``, a
single category, bits of infinite logits. An estimator should give a finite value and finite
gradients there (for the logits and for a parameter of the loss), in ``float16`` and
``bfloat16`` too.

Example:
    >>> from latentgrad.estimators import ScoreFunction
    >>> " and ".join(c.name for c in extreme_unit_cases(["one-category", "bernoulli-inf"]))
    'one-category and bernoulli-inf'
    >>> check_finite_on_extreme_logits(lambda: ScoreFunction(), torch.bfloat16)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from latentgrad.distributions import Bernoulli, Categorical
from latentgrad.estimators import Estimator, LatentDistribution

#: The floating dtypes an estimator is checked in.
FLOAT_DTYPES: tuple[torch.dtype, ...] = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
)


@dataclass(frozen=True)
class ExtremeCase:
    """A latent of extreme logits.

    Attributes:
        name: what is extreme.
        make: the latent from (a copy of) ``logits``.
        logits: the logits, float32 (cast to the dtype under test).
    """

    name: str
    make: Callable[[Tensor], LatentDistribution]
    logits: Tensor


def _categorical(x: Tensor) -> LatentDistribution:
    return Categorical(logits=x)


def _bernoulli(x: Tensor) -> LatentDistribution:
    return Bernoulli(logits=x)


def _units(x: Tensor) -> LatentDistribution:
    return Categorical(logits=x).to_event(1)


def extreme_unit_cases(names: Sequence[str] | None = None) -> list[ExtremeCase]:
    """The extreme cases (all, or those ``names`` in this order), drawn with a fixed seed.

    ``categorical-1e4`` (normal logits times ``1e4``), ``all-inf-but-one``, ``all-minus-1e4``,
    ``one-category``, ``categorical-30`` (logits ``+-30``: probabilities below float16's
    smallest), ``bernoulli-1e4``, ``bernoulli-inf`` (``+-inf`` and 0) and ``units-1e4``
    (independent categoricals, ``to_event(1)``).

    Raises:
        ValueError: for an unknown name.
    """
    g = torch.Generator().manual_seed(0)
    one_left = torch.full((3, 5), -torch.inf)
    one_left[:, 2] = 0
    cases = [
        ExtremeCase("categorical-1e4", _categorical, torch.randn(3, 5, generator=g) * 1e4),
        ExtremeCase("all-inf-but-one", _categorical, one_left),
        ExtremeCase("all-minus-1e4", _categorical, torch.full((3, 5), -1e4)),
        ExtremeCase("one-category", _categorical, torch.zeros(3, 1)),
        ExtremeCase("categorical-30", _categorical, torch.tensor([[30.0, 0.0, -30.0, 1.0]])),
        ExtremeCase("bernoulli-1e4", _bernoulli, torch.randn(3, 4, generator=g) * 1e4),
        ExtremeCase("bernoulli-inf", _bernoulli, torch.tensor([[torch.inf, -torch.inf, 0.0]])),
        ExtremeCase("units-1e4", _units, torch.randn(2, 3, 3, generator=g) * 1e4),
    ]
    if names is None:
        return cases
    known = {c.name: c for c in cases}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"names has unknown case(s) {unknown}; the cases are {list(known)}")
    return [known[n] for n in names]


def check_finite_on_extreme_logits(
    make_estimator: Callable[[], Estimator],
    dtype: torch.dtype,
    cases: Sequence[ExtremeCase] | None = None,
    *,
    with_log_prob: bool = False,
) -> None:
    """Assert that a fresh estimator gives a finite value and finite gradients on each case.

    The loss is ``theta * (sum of z) + 1e3`` (plus ``log q(z)`` with ``with_log_prob``, as in
    an ELBO or IWAE bound) with ``theta = 1.5`` in ``dtype``; the gradients checked are those
    of the logits and of ``theta``.

    Args:
        make_estimator: builds the estimator (one per case).
        dtype: the dtype of the logits and of ``theta``.
        cases: the cases (default: all of :func:`extreme_unit_cases`).
        with_log_prob: add ``log q(z)`` to the loss.

    Raises:
        AssertionError: naming the case and dtype of the first non-finite value or gradient.
    """
    for case in extreme_unit_cases() if cases is None else cases:
        x = case.logits.to(dtype).requires_grad_(True)
        theta = torch.tensor(1.5, dtype=dtype, requires_grad=True)
        q = case.make(x)
        event_ndim = len(q.event_shape)

        def loss_fn(
            z: Tensor, q: LatentDistribution = q, n: int = event_ndim, t: Tensor = theta
        ) -> Tensor:
            loss = z.flatten(z.dim() - n).sum(-1) * t + 1e3
            return loss + q.log_prob(z) if with_log_prob else loss

        out = make_estimator()(q, loss_fn)
        out.surrogate.float().sum().backward()
        where = f"{case.name} in {dtype}"
        assert torch.isfinite(out.value.float()).all(), f"non-finite value on {where}"
        assert x.grad is not None, f"no gradient for the logits on {where}"
        assert torch.isfinite(x.grad.float()).all(), f"non-finite logits gradient on {where}"
        assert theta.grad is not None, f"no gradient for the loss parameter on {where}"
        assert torch.isfinite(theta.grad.float()), f"non-finite loss-parameter gradient on {where}"


__all__ = [
    "FLOAT_DTYPES",
    "ExtremeCase",
    "check_finite_on_extreme_logits",
    "extreme_unit_cases",
]
