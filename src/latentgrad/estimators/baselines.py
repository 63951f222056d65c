"""Control variates (baselines) for score-function estimators.

A baseline turns the learning signal ``f(z_k)`` of a score-function estimator into
``(f(z_k) - b_k) / s``. The estimator stays unbiased as long as ``b_k`` does not depend on the
sample ``z_k`` it is subtracted from (it may depend on the other samples, on the input ``x``
and on earlier steps) and the scale ``s`` depends on none of the current samples.

The protocol is small: a baseline is called as ``baseline(samples, losses, context)`` and
returns a :class:`BaselineOutput`; ``num_extra_samples(num_samples)`` says how many additional
independent samples it needs (they are drawn and evaluated in the same batched loss call as
the scored ones). Baselines with state (running averages, networks) are ``torch.nn.Module``\\ s,
so the estimator that holds them checkpoints them with its ``state_dict``.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from latentgrad._validation import check_int, check_output_shape, check_probability
from latentgrad.estimators._base import broadcasts_to


class BaselineOutput(NamedTuple):
    """What a baseline returns.

    Attributes:
        value: the baseline ``b_k`` of each scored sample, shape ``(K,) + batch_shape`` (or
            broadcastable to it); treated as a constant by the estimator.
        loss: the baseline's own training loss (a scalar with a graph to its parameters) for
            learned baselines, else ``None``. The estimator adds it to the surrogate with value
            0, so the backward pass of the surrogate also trains the baseline.
        scale: a positive divisor of the centred signal (NVIL variance normalization),
            broadcastable to ``batch_shape``, or ``None``.
    """

    value: Tensor
    loss: Tensor | None = None
    scale: Tensor | None = None


@runtime_checkable
class Baseline(Protocol):
    """A control variate for the score-function signal.

    ``samples`` holds the ``K`` scored samples followed by the ``num_extra_samples(K)`` extra
    ones, shape ``(K + E,) + batch_shape + event_shape``; ``losses`` their detached losses (or,
    for :class:`~latentgrad.estimators.muprop.MuProp`, the residuals after its Taylor
    baseline), shape ``(K + E,) + batch_shape``; ``context`` whatever the caller passed to the
    estimator (the input ``x`` of an input-dependent baseline), or ``None``.

    Subclass it explicitly to inherit the default :meth:`num_extra_samples` (0).
    """

    def __call__(
        self, samples: Tensor, losses: Tensor, context: Tensor | None
    ) -> BaselineOutput: ...

    def num_extra_samples(self, num_samples: int) -> int:
        """Extra independent samples needed besides the ``num_samples`` scored ones.

        Called once when the estimator is built; raises ``ValueError`` when the baseline
        cannot work with ``num_samples`` (e.g. leave-one-out with a single sample).
        """
        return 0


class CenteredSignal(NamedTuple):
    """The learning signal after a baseline, as estimators use it.

    Attributes:
        signal: ``(f_k - b_k) / scale`` (detached), shape ``(K,) + batch_shape``.
        baseline: ``b_k`` (detached), shape ``(K,) + batch_shape``.
        loss: the baseline's own loss, or ``None``.
        scale: the divisor, or ``None``.
    """

    signal: Tensor
    baseline: Tensor
    loss: Tensor | None
    scale: Tensor | None


def check_baseline(baseline: object, num_samples: int, name: str = "baseline") -> int:
    """Check ``baseline`` (``None`` or a :class:`Baseline`) and return its extra sample count."""
    if baseline is None:
        return 0
    if not isinstance(baseline, Baseline):
        raise TypeError(
            f"{name} must be None or a Baseline (callable with num_extra_samples), "
            f"got {type(baseline).__name__}"
        )
    return check_int(
        baseline.num_extra_samples(num_samples), f"{name}.num_extra_samples()", minimum=0
    )


def apply_baseline(
    baseline: Baseline | None,
    samples: Tensor,
    losses: Tensor,
    context: Tensor | None,
    num_samples: int,
) -> CenteredSignal:
    """Centre (and scale) the learning signal of the first ``num_samples`` samples.

    Args:
        baseline: the control variate, or ``None`` (signal = loss).
        samples: scored then extra samples, shape ``(K + E,) + batch_shape + event_shape``.
        losses: their detached losses, shape ``(K + E,) + batch_shape``.
        context: passed through to the baseline.
        num_samples: ``K``, the number of scored samples.

    Returns:
        :class:`CenteredSignal`.
    """
    losses = losses.detach()
    scored = losses[:num_samples]
    if baseline is None:
        return CenteredSignal(scored, torch.zeros_like(scored), None, None)
    out = baseline(samples, losses, context)
    if not isinstance(out, BaselineOutput):
        raise TypeError(f"a baseline must return a BaselineOutput, got {type(out).__name__}")
    value = out.value.detach().to(scored.dtype)
    if not broadcasts_to(value.shape, scored.shape):
        raise ValueError(
            f"the baseline's value must broadcast to (K,) + batch_shape = {tuple(scored.shape)}, "
            f"got {tuple(out.value.shape)}"
        )
    value = value.expand_as(scored)
    signal = scored - value
    scale = out.scale
    if scale is not None:
        scale = scale.detach().to(scored.dtype)
        signal = signal / scale
    return CenteredSignal(signal, value, out.loss, scale)


def _ema(buffer: Tensor, new: Tensor, decay: float, initialized: Tensor) -> None:
    """In place: ``buffer <- new`` on the first update, else ``decay * buffer + (1 - decay) * new``.

    Starting from the first batch statistic instead of 0 avoids the start-up bias of an
    exponential average.
    """
    new = new.to(buffer)  # dtype and device: the buffer may sit on another device
    if bool(initialized):
        buffer.mul_(decay).add_(new, alpha=1 - decay)
    else:
        buffer.copy_(new)


class _RunningStatistic(nn.Module):
    """A baseline ``b_k = c``, a scalar buffer ``average`` of earlier steps' losses, folded in
    (training mode only) after the step's value is handed out; subclasses say how."""

    average: Tensor

    def num_extra_samples(self, num_samples: int) -> int:
        return 0

    def _fold(self, losses: Tensor) -> None:
        raise NotImplementedError

    def forward(self, samples: Tensor, losses: Tensor, context: Tensor | None) -> BaselineOutput:
        # clone: the in-place update below must not change the value already handed out
        value = self.average.to(losses).clone().expand_as(losses)
        if self.training and losses.numel():  # an empty batch has no statistic to average
            with torch.no_grad():
                self._fold(losses.detach())
        return BaselineOutput(value)


class MovingAverage(_RunningStatistic):
    """Exponential moving average of the mean loss of previous steps: ``b_k = c``.

    The baseline of a step is the average *before* the step's losses are folded in, so it is
    independent of the current samples and the estimator stays unbiased. The first step uses
    ``c = 0``; the average then starts at that step's mean loss (no start-up bias towards 0).
    Like batch-norm statistics, the average is only updated in training mode.

    Args:
        decay: weight of the old average, ``c <- decay * c + (1 - decay) * mean(losses)``;
            Tokui & Sato's rate 0.2 is ``decay = 0.8``.

    Shape:
        ``value``: ``(K,) + batch_shape``, all equal to the scalar buffer ``average``.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators.baselines import MovingAverage
        >>> from latentgrad.estimators.score_function import ScoreFunction
        >>> est = ScoreFunction(num_samples=2, baseline=MovingAverage(decay=0.8))
        >>> q = lg.Categorical(logits=torch.zeros(5, 3))
        >>> _ = est(q, lambda z: 10.0 + z[..., 0])
        >>> 10.0 <= float(est.baseline.average) <= 11.0
        True

    References:
        [1] Williams, "Simple statistical gradient-following algorithms for connectionist
            reinforcement learning", Machine Learning 1992.
        [2] Tokui & Sato, "Evaluating the Variance of Likelihood-Ratio Gradient Estimators",
            ICML 2017.
    """

    initialized: Tensor

    def __init__(self, decay: float = 0.8) -> None:
        super().__init__()
        self.decay = check_probability(decay, "decay")
        self.register_buffer("average", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def extra_repr(self) -> str:
        return f"decay={self.decay}"

    def _fold(self, losses: Tensor) -> None:
        _ema(self.average, losses.float().mean(), self.decay, self.initialized)
        self.initialized.fill_(True)


class CumulativeMean(_RunningStatistic):
    """The mean loss of all previous steps: ``b_k = c_t = (m_1 + ... + m_{t-1}) / (t - 1)``.

    ``m_s`` is step ``s``'s mean loss; the first step uses ``c = 0``. This is the running
    average of Correia et al.'s score-function code ("runavg"). Unlike
    :class:`MovingAverage` it never forgets: while the loss falls, ``c`` lags above it (by
    half of the fall so far when the loss falls at a steady rate), so the centred signal is
    mostly negative. Still unbiased (``c`` depends on earlier steps only); updated in training mode
    only.

    Shape:
        ``value``: ``(K,) + batch_shape``, all equal to the scalar buffer ``average``.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators.baselines import CumulativeMean
        >>> est = lg.ScoreFunction(baseline=CumulativeMean())
        >>> q = lg.Categorical(logits=torch.zeros(5, 3))
        >>> for level in (10.0, 20.0, 30.0):
        ...     _ = est(q, lambda z: level + 0 * z[..., 0])
        >>> float(est.baseline.average), int(est.baseline.count)
        (20.0, 3)

    References:
        [1] Correia, Niculae, Aziz & Martins, "Efficient Marginalization of Discrete and
            Structured Latent Variables via Sparsity", NeurIPS 2020 (``lvmhelpers/sfe.py``).
    """

    count: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("average", torch.zeros((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    def _fold(self, losses: Tensor) -> None:
        self.count.add_(1)
        mean = losses.double().mean().to(self.average)
        self.average.add_((mean - self.average) / self.count.to(self.average))


class LeaveOneOut:
    """Leave-one-out baseline ``b_k = (sum_j f_j - f_k) / (K - 1)`` over the ``K`` samples.

    Each sample's baseline is the mean loss of the other samples, which are independent of it,
    so the estimator is unbiased; no extra loss evaluations and no state. Needs ``K >= 2``
    (the estimator raises ``ValueError`` when built with ``num_samples=1``).

    Shape:
        ``value``: ``(K,) + batch_shape``.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators.baselines import LeaveOneOut
        >>> from latentgrad.estimators.score_function import ScoreFunction
        >>> est = ScoreFunction(num_samples=4, baseline=LeaveOneOut())
        >>> out = est(lg.Categorical(logits=torch.zeros(2, 3)), lambda z: 5.0 + 0 * z[..., 0])
        >>> out.extras["baseline"]
        tensor([[5., 5.],
                [5., 5.],
                [5., 5.],
                [5., 5.]])

    References:
        [1] Kool, van Hoof & Welling, "Buy 4 REINFORCE Samples, Get a Baseline for Free!",
            ICLR workshop 2019.
    """

    def __repr__(self) -> str:
        return "LeaveOneOut()"

    def num_extra_samples(self, num_samples: int) -> int:
        if num_samples < 2:
            raise ValueError(
                f"num_samples must be >= 2 with the LeaveOneOut baseline, got {num_samples}"
            )
        return 0

    def __call__(self, samples: Tensor, losses: Tensor, context: Tensor | None) -> BaselineOutput:
        k = losses.shape[0]
        if k < 2:
            raise ValueError(f"losses must hold at least 2 samples for LeaveOneOut, got {k}")
        return BaselineOutput((losses.sum(0, keepdim=True) - losses) / (k - 1))


class IndependentSample:
    """The mean loss of extra independent samples as baseline ("SFE+", Correia et al. 2020).

    The estimator draws ``num_samples`` extra samples along with the scored ones and evaluates
    them in the same loss call; they get no score term and only serve as baseline
    ``b_k = mean_e f(z'_e)``, shared by all scored samples and independent of them.

    With ``backprop`` the baseline keeps its graph, as in Correia et al.'s code, whose
    surrogate ``(f(z_k).detach() - b_k) log q(z_k)`` does not detach ``b_k``: the loss's own
    parameters (a decoder) then also get ``-log q(z_k) grad b_k``, the extra samples' gradient
    weighted by the scored sample's surprisal. That is no longer an estimate of the gradient of
    ``E_q[f]`` (the gradient with respect to ``q``'s parameters is unchanged, the extra samples
    being drawn without a graph); it exists to reproduce their SFE+ runs.

    Args:
        num_samples: number of extra samples ``E``.
        backprop: let ``b_k`` carry the gradient above (default ``False``: the baseline is a
            constant, the estimator unbiased).

    Shape:
        ``value``: ``(K,) + batch_shape``, where ``losses`` has ``K + E`` rows.

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators.baselines import IndependentSample
        >>> from latentgrad.estimators.score_function import ScoreFunction
        >>> est = ScoreFunction(num_samples=1, baseline=IndependentSample())
        >>> est(lg.Categorical(logits=torch.zeros(4, 3)), lambda z: z[..., 0]).loss_evals
        2

    References:
        [1] Correia, Niculae, Aziz & Martins, "Efficient Marginalization of Discrete and
            Structured Latent Variables via Sparsity", NeurIPS 2020.
    """

    def __init__(self, num_samples: int = 1, *, backprop: bool = False) -> None:
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)
        if not isinstance(backprop, bool):
            raise TypeError(f"backprop must be a bool, got {type(backprop).__name__}")
        self.backprop = backprop

    def __repr__(self) -> str:
        extra = ", backprop=True" if self.backprop else ""
        return f"IndependentSample(num_samples={self.num_samples}{extra})"

    def num_extra_samples(self, num_samples: int) -> int:
        return self.num_samples

    def __call__(self, samples: Tensor, losses: Tensor, context: Tensor | None) -> BaselineOutput:
        k = losses.shape[0] - self.num_samples
        if k < 1:
            raise ValueError(
                f"losses must hold the scored samples and {self.num_samples} extra ones, "
                f"got {losses.shape[0]} rows"
            )
        mean = losses[k:].mean(0, keepdim=True)
        return BaselineOutput(mean.expand((k, *losses.shape[1:])))


class NVIL(nn.Module):
    """Input-dependent learned baseline with centring and variance normalization (NVIL).

    The baseline is ``b(x) = c + network(x)`` with ``x`` the ``context`` passed to the
    estimator and ``c`` a running mean of the residual ``f - network(x)``. The network is trained
    by its own loss, the mean squared error ``mean_k (f_k - c - network(x))^2`` (losses
    detached), which the estimator adds to its surrogate with value 0: add the *estimator's*
    parameters to the optimizer and one backward pass trains both. With variance normalization
    the centred signal is divided by ``max(1, sqrt(v))``, ``v`` a running variance of the
    residual; this rescales the gradient estimate (it stays unbiased only up to that positive
    factor). ``c`` and ``v`` are used as they were *before* the current step, so neither depends
    on the current samples (Mnih & Gregor update them first; we do not, to keep the estimator
    unbiased); they are updated in training mode only.

    Args:
        network: maps ``context`` (shape ``batch_shape + (F,)``, or whatever the network takes)
            to ``batch_shape`` or ``batch_shape + (1,)``.
        variance_normalization: divide the centred signal by ``max(1, running std)``.
        decay: weight of the old value in the running mean and variance.

    Shape:
        ``value``: ``(K,) + batch_shape``; ``loss``: scalar; ``scale``: scalar (or ``None``).

    Example:
        >>> import torch, latentgrad as lg
        >>> from latentgrad.estimators.baselines import NVIL
        >>> from latentgrad.estimators.score_function import ScoreFunction
        >>> x = torch.randn(8, 5)
        >>> est = ScoreFunction(baseline=NVIL(torch.nn.Linear(5, 1)))
        >>> out = est(lg.Categorical(logits=torch.zeros(8, 3)), lambda z: z[..., 0], context=x)
        >>> out.surrogate.mean().backward()  # also trains the baseline network
        >>> est.baseline.network.weight.grad is not None
        True

    References:
        [1] Mnih & Gregor, "Neural Variational Inference and Learning in Belief Networks",
            ICML 2014.
    """

    center: Tensor
    variance: Tensor
    initialized: Tensor

    def __init__(
        self, network: nn.Module, variance_normalization: bool = False, decay: float = 0.8
    ) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}")
        if not isinstance(variance_normalization, bool):
            raise TypeError(
                f"variance_normalization must be a bool, got {type(variance_normalization).__name__}"
            )
        self.network = network
        self.variance_normalization = variance_normalization
        self.decay = check_probability(decay, "decay")
        self.register_buffer("center", torch.zeros(()))
        self.register_buffer("variance", torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def extra_repr(self) -> str:
        return f"variance_normalization={self.variance_normalization}, decay={self.decay}"

    def num_extra_samples(self, num_samples: int) -> int:
        return 0

    def forward(self, samples: Tensor, losses: Tensor, context: Tensor | None) -> BaselineOutput:
        if context is None:
            raise ValueError(
                "context is required by the NVIL baseline: pass context=x (the input of its "
                "network) to the estimator"
            )
        batch_shape = losses.shape[1:]
        out = check_output_shape(
            self.network(context),
            tuple(batch_shape),
            "network(context)",
            f"batch_shape {tuple(batch_shape)} or batch_shape + (1,)",
        )
        prediction = out.to(losses.dtype)
        center = self.center.to(losses).clone()
        residual2 = (losses - center - prediction).pow(2)
        own_loss = residual2.mean() if residual2.numel() else residual2.sum()  # empty batch: 0
        value = (center + prediction.detach()).expand_as(losses)
        scale = None
        if self.variance_normalization:
            scale = self.variance.to(losses).sqrt().clamp_min(1.0).clone()
        if self.training and losses.numel():  # an empty batch has no statistic to average
            with torch.no_grad():
                residual = (losses - prediction).float()
                _ema(self.center, residual.mean(), self.decay, self.initialized)
                _ema(self.variance, residual.var(correction=0), self.decay, self.initialized)
                self.initialized.fill_(True)
        return BaselineOutput(value, own_loss, scale)
