"""Schedules for temperatures, slopes and other hyperparameters that change during training.

A schedule is a small :class:`torch.nn.Module` whose only state is a step counter kept in a buffer,
so a model that owns one (e.g. :class:`~latentgrad.estimators.relaxed.GumbelSoftmax`) checkpoints
and resumes it through ``state_dict``. Its value is a Python float, a pure function of the step.
Whatever holds schedules and advances them (an estimator with an annealed temperature) is
:class:`Scheduled`: a training loop calls ``obj.step()`` once per training step when
``isinstance(obj, Scheduled)``.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from latentgrad._validation import check_int, check_nonnegative, check_positive


@runtime_checkable
class Scheduled(Protocol):
    """Anything advanced once per training step by ``step(n=1)``.

    :class:`~latentgrad.estimators.GumbelSoftmax` (temperature),
    :class:`~latentgrad.estimators.StraightThrough` (slope) and every :class:`Schedule` are
    ``Scheduled``; the estimators declare it by subclassing. A training loop advances whatever
    it holds with::

        if isinstance(estimator, Scheduled):
            estimator.step()

    Example:
        >>> import latentgrad as lg
        >>> from latentgrad.schedules import LinearGrowth, Scheduled
        >>> est = lg.StraightThrough(slope=LinearGrowth(rate=0.5))
        >>> isinstance(est, Scheduled), isinstance(lg.ScoreFunction(), Scheduled)
        (True, False)
        >>> est.step(2)
        2.0
        >>> from latentgrad.schedules import Constant
        >>> isinstance(Constant(1.0), Scheduled), isinstance(object(), Scheduled)
        (True, False)
    """

    def step(self, n: int = 1) -> float:
        """Advance by ``n`` steps; return the new value of what is scheduled."""
        ...


class Schedule(nn.Module):
    """Base class: a value that depends on the number of :meth:`step` calls made so far.

    Subclasses implement :meth:`value_at`. The counter lives in the ``step_count`` buffer (an
    ``int64`` scalar), so ``state_dict``/``load_state_dict`` restore the schedule exactly;
    the constructor arguments are configuration, not state.

    Example:
        >>> from latentgrad.schedules import Constant
        >>> s = Constant(0.5)
        >>> s.step(), s.value, int(s.step_count)
        (0.5, 0.5, 1)
    """

    step_count: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("step_count", torch.zeros((), dtype=torch.long))

    def value_at(self, t: int) -> float:
        """The value after ``t`` steps."""
        raise NotImplementedError

    @property
    def value(self) -> float:
        """The current value, :meth:`value_at` the current step count."""
        return self.value_at(int(self.step_count))

    def step(self, n: int = 1) -> float:
        """Advance the counter by ``n`` steps and return the new value."""
        n = check_int(n, "n", minimum=0)
        self.step_count.add_(n)
        return self.value

    def forward(self) -> float:
        """The current value (so a schedule can be called like any module)."""
        return self.value


class Constant(Schedule):
    """A value that never changes (what a plain float temperature becomes).

    Args:
        value: the constant, a finite real number.

    Example:
        >>> from latentgrad.schedules import Constant
        >>> Constant(2.0).value_at(10**6)
        2.0
    """

    constant: float

    def __init__(self, value: float) -> None:
        super().__init__()
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(f"value must be a real number, got {type(value).__name__}")
        if not math.isfinite(float(value)):
            raise ValueError(f"value must be finite, got {value!r}")
        self.constant = float(value)

    def value_at(self, t: int) -> float:
        return self.constant

    def extra_repr(self) -> str:
        return f"value={self.constant}"


class ExponentialDecay(Schedule):
    """``max(minimum, initial * exp(-rate * t_N))``, recomputed every ``every`` steps.

    ``t_N = every * floor(t / every)`` is the step count at the last update, so the value is
    piecewise constant. Jang et al. anneal the Gumbel-Softmax temperature this way with
    ``rate`` in {1e-5, 1e-4}, ``every`` in {500, 1000} and ``minimum = 0.5``.

    Args:
        initial: value at step 0 (positive).
        rate: decay per step (``>= 0``; 0 gives a constant).
        every: update period ``N`` in steps (``>= 1``).
        minimum: floor of the value (positive, at most ``initial``).

    Example:
        >>> from latentgrad.schedules import ExponentialDecay
        >>> tau = ExponentialDecay(rate=1e-4, every=1000, minimum=0.5)
        >>> tau.value_at(999), round(tau.value_at(1000), 6), tau.value_at(10**6)
        (1.0, 0.904837, 0.5)

    References:
        [1] Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
    """

    def __init__(
        self,
        *,
        initial: float = 1.0,
        rate: float,
        every: int = 1,
        minimum: float = 0.5,
    ) -> None:
        super().__init__()
        self.initial = check_positive(initial, "initial")
        self.rate = check_nonnegative(rate, "rate")
        self.every = check_int(every, "every", minimum=1)
        self.minimum = check_positive(minimum, "minimum")
        if self.minimum > self.initial:
            raise ValueError(f"minimum ({minimum!r}) must not exceed initial ({initial!r})")

    def value_at(self, t: int) -> float:
        t = check_int(t, "t", minimum=0)
        t_n = self.every * (t // self.every)
        return max(self.minimum, self.initial * math.exp(-self.rate * t_n))

    def extra_repr(self) -> str:
        return (
            f"initial={self.initial}, rate={self.rate}, every={self.every}, minimum={self.minimum}"
        )


class LinearGrowth(Schedule):
    """``min(maximum, initial + rate * t_N)``, recomputed every ``every`` steps.

    The slope of slope-annealed straight-through grows this way: Chung et al. use
    ``min(5, 1 + 0.04 * epoch)``, i.e. ``rate = 0.04 / steps_per_epoch`` with
    ``every = steps_per_epoch``. ``t_N = every * floor(t / every)`` as in
    :class:`ExponentialDecay`.

    Args:
        initial: value at step 0 (positive).
        rate: growth per step (``>= 0``).
        every: update period ``N`` in steps (``>= 1``).
        maximum: ceiling of the value (finite, at least ``initial``).

    Example:
        >>> from latentgrad.schedules import LinearGrowth
        >>> slope = LinearGrowth(rate=0.04, maximum=5.0)
        >>> slope.value_at(0), slope.value_at(50), slope.value_at(1000)
        (1.0, 3.0, 5.0)

    References:
        [1] Chung, Ahn & Bengio, "Hierarchical Multiscale Recurrent Neural Networks", ICLR 2017.
    """

    def __init__(
        self,
        *,
        initial: float = 1.0,
        rate: float,
        every: int = 1,
        maximum: float = 5.0,
    ) -> None:
        super().__init__()
        self.initial = check_positive(initial, "initial")
        self.rate = check_nonnegative(rate, "rate")
        self.every = check_int(every, "every", minimum=1)
        self.maximum = check_positive(maximum, "maximum")
        if self.maximum < self.initial:
            raise ValueError(f"maximum ({maximum!r}) must not be below initial ({initial!r})")

    def value_at(self, t: int) -> float:
        t = check_int(t, "t", minimum=0)
        t_n = self.every * (t // self.every)
        return min(self.maximum, self.initial + self.rate * t_n)

    def extra_repr(self) -> str:
        return (
            f"initial={self.initial}, rate={self.rate}, every={self.every}, maximum={self.maximum}"
        )
