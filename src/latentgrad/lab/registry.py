"""Estimator names used by the command line and configs, mapped to typed options and constructors.

The library's estimators take typed arguments and never parse strings; this table is the one
place where a name such as ``"sf-loo"`` becomes ``ScoreFunction(4, LeaveOneOut())``, and
:func:`estimator_entry` is the one place where a name is checked (against the registry and the
experiment's list of supported estimators). Each entry has typed options (a frozen
:class:`EstimatorOptions` dataclass whose defaults are the paper settings): the number of
samples, the baseline, temperature and slope schedules, ``hard``, ``k``, ...;
:func:`resolve_options` checks overrides of them (from ``--num-samples 8`` or the
``"estimator_options"`` object of a config file) and returns the full options. The runner
resolves ``config.estimator`` and ``config.estimator_options`` once and hands the experiment a
built estimator (:class:`~latentgrad.lab.experiment.ResolvedEstimator`).

Networks inside estimators (NVIL's baseline) size their input on first use
(:class:`torch.nn.LazyLinear`), so an entry builds without knowing the experiment's data.

Example:
    >>> entry = ESTIMATORS["sf-loo"]
    >>> entry.description
    'score function, 4 samples, leave-one-out baseline'
    >>> entry.build().num_samples, entry.latent
    (4, 'softmax')
    >>> options = resolve_options("sf-loo", {"num_samples": 8})
    >>> options.num_samples, entry.build(options).num_samples
    (8, 8)
    >>> options_differences("sf-loo", options)
    {'num_samples': 8}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from torch import nn

from latentgrad.distributions import Capability, declares
from latentgrad.estimators import (
    ARMS,
    DARN,
    NVIL,
    REBAR,
    RELAX,
    VIMCO,
    ConcreteRELAX,
    CumulativeMean,
    DisARM,
    EReinforce,
    Estimator,
    GappedStraightThrough,
    GumbelRao,
    GumbelSoftmax,
    IndeCateR,
    IndependentSample,
    LeaveOneOut,
    LocalExpectation,
    LocalReparam,
    Marginalize,
    MLPCritic,
    MovingAverage,
    MuProp,
    ReinMax,
    ScoreFunction,
    StraightThrough,
    SumAndSample,
    TReinforce,
    UnorderedSet,
)
from latentgrad.estimators.unordered_set import MAX_K
from latentgrad.lab.config import (
    RECORDED_BEFORE,
    ConfigError,
    InvalidConfigValue,
    coerce_value,
    config_fields,
    config_to_dict,
    is_positive_int,
    parse_text,
    require,
)
from latentgrad.lab.experiment import (
    Experiment,
    ExperimentConfig,
    LatentFamily,
    ResolvedEstimator,
)
from latentgrad.schedules import ExponentialDecay, LinearGrowth


class UnknownEstimator(ValueError):
    """An estimator name that is not registered, or that the experiment does not support."""


class UnknownOption(ConfigError):
    """An estimator option that the estimator does not have (a ``ValueError``)."""


@dataclass(frozen=True)
class EstimatorOptions:
    """Base of the typed options of a registry entry: one frozen dataclass per kind of estimator.

    Each field is a constructor argument a paper varies; its type says how it is parsed (the
    types of :mod:`latentgrad.lab.config`), its ``Attributes:`` entry is its help text. An
    entry's defaults (the paper settings) are an instance, :attr:`EstimatorEntry.options`.
    Option names never collide with experiment config fields: both are flags of
    ``latentgrad run`` and keys of ``latentgrad sweep`` grids.
    """

    def validate(self) -> None:
        """Check the ranges of the values (types are checked when they are parsed).

        Raises:
            InvalidConfigValue: (a ``ValueError``) naming the first option out of range.
        """


def _check_positive_ints(options: EstimatorOptions, *names: str) -> None:
    for name in names:
        value = getattr(options, name)
        require(is_positive_int(value), name, "a positive int", value)


def _check_positive_numbers(options: EstimatorOptions, *names: str, zero: bool = False) -> None:
    for name in names:
        value = getattr(options, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and (value >= 0 if zero else value > 0)
        require(ok, name, "a finite number >= 0" if zero else "a positive finite number", value)


def _check_unused(options: EstimatorOptions, used: bool, name: str, switch: str) -> None:
    """An option that only matters under ``switch`` keeps its class default otherwise.

    So two spellings of one estimator never get two run identities.
    """
    default = next(f.default for f in dataclasses.fields(options) if f.name == name)
    value = getattr(options, name)
    if not used and value != default:
        raise InvalidConfigValue(name, f"left at {default!r} unless {switch}", value)


@dataclass(frozen=True)
class SupportOptions(EstimatorOptions):
    """Options of estimators that sum over the support exactly (``Marginalize``).

    Attributes:
        max_support: largest support summed; a larger latent is refused when the run starts.
    """

    max_support: int = 2**16

    def validate(self) -> None:
        _check_positive_ints(self, "max_support")


@dataclass(frozen=True)
class SamplesOptions(EstimatorOptions):
    """Options of sampling estimators whose only setting is the number of samples.

    Attributes:
        num_samples: samples per example and step.
    """

    num_samples: int = 1

    def validate(self) -> None:
        _check_positive_ints(self, "num_samples")


Baseline = Literal[
    "none", "moving-average", "cumulative-mean", "leave-one-out", "independent-sample", "nvil"
]


@dataclass(frozen=True)
class ScoreFunctionOptions(EstimatorOptions):
    """Options of the score function (REINFORCE) estimator and its baselines.

    Attributes:
        num_samples: scored samples per example and step.
        baseline: the control variate: none, moving-average (of the loss), cumulative-mean (the
            mean loss of all earlier steps, Correia et al.'s SFE), leave-one-out (the
            mean loss of the other samples; needs num_samples >= 2), independent-sample (the
            loss of extra samples, SFE+) or nvil (a learned input-dependent network, Mnih &
            Gregor 2014).
        baseline_decay: decay of the running mean of the moving-average and nvil baselines.
        baseline_samples: extra samples of the independent-sample baseline.
        baseline_backprop: the independent-sample baseline keeps its gradient, as in Correia et
            al.'s code (the decoder also learns from the extra samples, weighted by -log q of
            the scored one; biased, see IndependentSample).
        nvil_hidden: hidden units per layer of the nvil baseline network.
        nvil_layers: hidden layers of the nvil baseline network (Mnih & Gregor: one; Correia
            et al.'s bit-vector VAE: three of 512 ReLU units).
        nvil_activation: the nvil network's nonlinearity after each hidden layer.
    """

    num_samples: int = 1
    baseline: Baseline = "none"
    baseline_decay: float = 0.8
    baseline_samples: int = 1
    baseline_backprop: bool = field(default=False, metadata={RECORDED_BEFORE: False})
    nvil_hidden: int = 100
    # (added after runs were recorded, which ran with one tanh layer: see RECORDED_BEFORE)
    nvil_layers: int = field(default=1, metadata={RECORDED_BEFORE: 1})
    nvil_activation: Literal["tanh", "relu"] = field(
        default="tanh", metadata={RECORDED_BEFORE: "tanh"}
    )

    def validate(self) -> None:
        _check_positive_ints(self, "num_samples", "baseline_samples", "nvil_hidden", "nvil_layers")
        activation = self.nvil_activation
        require(activation in _ACTIVATIONS, "nvil_activation", "'tanh' or 'relu'", activation)
        decay = self.baseline_decay
        ok = isinstance(decay, (int, float)) and not isinstance(decay, bool) and 0 <= decay <= 1
        require(ok, "baseline_decay", "a number in [0, 1]", decay)
        if self.baseline == "leave-one-out":
            require(
                self.num_samples >= 2,
                "num_samples",
                "at least 2 with the leave-one-out baseline",
                self.num_samples,
            )
        decayed = self.baseline in ("moving-average", "nvil")
        _check_unused(self, decayed, "baseline_decay", "baseline is moving-average or nvil")
        extra = self.baseline == "independent-sample"
        _check_unused(self, extra, "baseline_samples", "baseline is independent-sample")
        _check_unused(self, extra, "baseline_backprop", "baseline is independent-sample")
        for name in ("nvil_hidden", "nvil_layers", "nvil_activation"):
            _check_unused(self, self.baseline == "nvil", name, "baseline is nvil")


@dataclass(frozen=True)
class GumbelSoftmaxOptions(EstimatorOptions):
    """Options of Gumbel-Softmax: ``tau = max(tau_minimum, tau_initial exp(-tau_rate t))``,
    ``t`` the step count rounded down to a multiple of ``tau_every`` (Jang et al. 2017).

    Attributes:
        tau_initial: temperature at step 0.
        tau_rate: decay rate per step (0: a constant temperature tau_initial).
        tau_every: steps between temperature updates.
        tau_minimum: the temperature never goes below it (at most tau_initial).
        hard: straight-through Gumbel-Softmax: the loss sees the discrete sample.
        num_samples: samples per example and step.
        honest_value: with hard false, or hard_at mode, also evaluate the loss at the discrete
            sample (a second loss pass, 1.1-1.5x the time of a VAE step) so that the step's
            reported loss is the true loss; false skips it, and an experiment then reports no
            honest training loss (the VAE: loss NaN, relaxed_loss the relaxed objective; with
            hard_at mode, the loss at the mode). Validation and test metrics, and the gradient,
            are the same either way.
        hard_at: with hard, the discrete point the loss sees: sample (z ~ q, Jang et al.) or
            mode (the mode of q, deterministic; Correia et al.'s code for bit-vectors).
    """

    tau_initial: float = 1.0
    tau_rate: float = 1e-4
    tau_every: int = 1000
    tau_minimum: float = 0.5
    hard: bool = False
    num_samples: int = 1
    honest_value: bool = True
    # (added after runs were recorded, which all forwarded the sample: see RECORDED_BEFORE)
    hard_at: Literal["sample", "mode"] = field(
        default="sample", metadata={RECORDED_BEFORE: "sample"}
    )

    def validate(self) -> None:
        _check_positive_numbers(self, "tau_initial", "tau_minimum")
        require(self.hard_at in ("sample", "mode"), "hard_at", "'sample' or 'mode'", self.hard_at)
        _check_positive_numbers(self, "tau_rate", zero=True)
        _check_positive_ints(self, "tau_every", "num_samples")
        require(
            self.tau_minimum <= self.tau_initial,
            "tau_minimum",
            f"at most tau_initial ({self.tau_initial})",
            self.tau_minimum,
        )
        # the sample forward is honest already
        _check_unused(
            self,
            not self.hard or self.hard_at == "mode",
            "honest_value",
            "hard is false or hard_at is mode",
        )
        _check_unused(self, self.hard, "hard_at", "hard is true")

    def schedule(self) -> ExponentialDecay | float:
        """The temperature: a schedule, or a float when ``tau_rate`` is 0."""
        if self.tau_rate == 0:
            return float(self.tau_initial)
        return ExponentialDecay(
            initial=self.tau_initial,
            rate=self.tau_rate,
            every=self.tau_every,
            minimum=self.tau_minimum,
        )


@dataclass(frozen=True)
class StraightThroughOptions(EstimatorOptions):
    """Options of straight-through: the slope ``min(slope_maximum, slope_initial + slope_rate
    t)``, ``t`` rounded down to a multiple of ``slope_every`` (slope annealing, Chung et al.).

    Attributes:
        slope_initial: slope of the logits at step 0 (1: plain straight-through).
        slope_rate: slope growth per step (0: a constant slope slope_initial).
        slope_every: steps between slope updates.
        slope_maximum: the slope never exceeds it (at least slope_initial).
        num_samples: samples per example and step.
    """

    slope_initial: float = 1.0
    slope_rate: float = 0.0
    slope_every: int = 1
    slope_maximum: float = 5.0
    num_samples: int = 1

    def validate(self) -> None:
        _check_positive_numbers(self, "slope_initial", "slope_maximum")
        _check_positive_numbers(self, "slope_rate", zero=True)
        _check_positive_ints(self, "slope_every", "num_samples")
        require(
            self.slope_maximum >= self.slope_initial,
            "slope_maximum",
            f"at least slope_initial ({self.slope_initial})",
            self.slope_maximum,
        )

    def schedule(self) -> LinearGrowth | float:
        """The slope: a schedule, or a float when ``slope_rate`` is 0."""
        if self.slope_rate == 0:
            return float(self.slope_initial)
        return LinearGrowth(
            initial=self.slope_initial,
            rate=self.slope_rate,
            every=self.slope_every,
            maximum=self.slope_maximum,
        )


@dataclass(frozen=True)
class SumAndSampleOptions(EstimatorOptions):
    """Options of Sum&Sample (Liu et al. 2019).

    Attributes:
        k: the likeliest values summed exactly (one more is sampled from the rest).
        max_support: largest support enumerated to find them.
    """

    k: int = 1
    max_support: int = 2**16

    def validate(self) -> None:
        _check_positive_ints(self, "k", "max_support")


@dataclass(frozen=True)
class RelaxOptions(EstimatorOptions):
    """Options of RELAX with its default critic (an MLP with two tanh hidden layers).

    Attributes:
        num_samples: samples per example and step.
        critic_hidden: width of both hidden layers of the critic.
    """

    num_samples: int = 1
    critic_hidden: int = 32

    def validate(self) -> None:
        _check_positive_ints(self, "num_samples", "critic_hidden")


@dataclass(frozen=True)
class RebarOptions(EstimatorOptions):
    """Options of REBAR (Tucker et al. 2017): the Concrete relaxation's loss as a control
    variate, its temperature and scale trained to minimise the variance.

    Attributes:
        num_samples: samples per example and step (3 loss evaluations each).
        tau_initial: initial temperature of the relaxation (Tucker et al.: 0.5).
        eta_initial: initial scale of the control variate.
        learn_tau: train the temperature (its logarithm) on the variance.
        learn_eta: train the scale on the variance.
    """

    num_samples: int = 1
    tau_initial: float = 0.5
    eta_initial: float = 1.0
    learn_tau: bool = True
    learn_eta: bool = True

    def validate(self) -> None:
        _check_positive_ints(self, "num_samples")
        _check_positive_numbers(self, "tau_initial")
        eta = self.eta_initial
        ok = isinstance(eta, (int, float)) and not isinstance(eta, bool) and math.isfinite(eta)
        require(ok, "eta_initial", "a finite number", eta)


@dataclass(frozen=True)
class ConcreteRelaxOptions(EstimatorOptions):
    """Options of RELAX on the Concrete relaxation (Grathwohl et al. 2018): an MLP critic (two
    tanh hidden layers) on the relaxed sample, plus REBAR's scaled relaxed loss.

    Attributes:
        num_samples: samples per example and step.
        critic_hidden: width of both hidden layers of the critic.
        tau_initial: initial temperature of the relaxation (trained on the variance).
        loss_term: add eta times the loss at the relaxed sample to the critic, as in Grathwohl
            et al.'s discrete experiments (3 loss evaluations per sample instead of 1).
        eta_initial: initial eta of the loss term (left at 1 without loss_term).
    """

    num_samples: int = 1
    critic_hidden: int = 32
    tau_initial: float = 0.5
    loss_term: bool = True
    eta_initial: float = 1.0

    def validate(self) -> None:
        _check_positive_ints(self, "num_samples", "critic_hidden")
        _check_positive_numbers(self, "tau_initial")
        eta = self.eta_initial
        ok = isinstance(eta, (int, float)) and not isinstance(eta, bool) and math.isfinite(eta)
        require(ok, "eta_initial", "a finite number", eta)
        _check_unused(self, self.loss_term, "eta_initial", "loss_term is true")


@dataclass(frozen=True)
class DisarmOptions(EstimatorOptions):
    """Options of DisARM (Dong et al. 2020; categorical latents through stick-breaking bits).

    Attributes:
        num_pairs: antithetic pairs per example and step (2 loss evaluations each).
    """

    num_pairs: int = 1

    def validate(self) -> None:
        _check_positive_ints(self, "num_pairs")


@dataclass(frozen=True)
class ArmsOptions(EstimatorOptions):
    """Options of ARMS (Dimitriev & Zhou 2021): samples coupled through a Dirichlet copula.

    Attributes:
        num_samples: coupled samples per example and step (at least 2; 2 is DisARM).
    """

    num_samples: int = 4

    def validate(self) -> None:
        _check_positive_ints(self, "num_samples")
        require(self.num_samples >= 2, "num_samples", "at least 2", self.num_samples)


@dataclass(frozen=True)
class TopKOptions(EstimatorOptions):
    """Options of top-k sparsemax marginalization.

    Attributes:
        k: structures kept by the k-best search (the support has at most k; Correia et al.:
            10).
    """

    k: int = 10

    def validate(self) -> None:
        _check_positive_ints(self, "k")


@dataclass(frozen=True)
class SparseMAPBudgetOptions(EstimatorOptions):
    """Options of SparseMAP marginalization over bit-vectors with at most ``budget`` ones.

    Attributes:
        budget: the largest number of ones of a structure (none: the experiment's default; the
            bit-vector VAE's is half the bits, Correia et al.'s 16 of 32 and 64 of 128).
        max_support: largest support summed; a larger latent is refused when the run starts.
    """

    budget: int | None = None
    max_support: int = 2**16

    def validate(self) -> None:
        budget = self.budget
        require(is_positive_int(budget, optional=True), "budget", "a positive int or none", budget)
        _check_positive_ints(self, "max_support")


@dataclass(frozen=True)
class ReinMaxOptions(EstimatorOptions):
    """Options of ReinMax (Liu et al. 2023) and gapped straight-through (GST, Fan et al. 2022).

    Attributes:
        tau: temperature (ReinMax: of softmax(logits / tau) in its midpoint, the paper prefers
            tau >= 1; GST: of its soft sample).
        num_samples: samples per example and step.
    """

    tau: float = 1.0
    num_samples: int = 1

    def validate(self) -> None:
        _check_positive_numbers(self, "tau")
        _check_positive_ints(self, "num_samples")


@dataclass(frozen=True)
class GappedOptions(ReinMaxOptions):
    """Options of gapped straight-through with a fixed gap (GST-1.0 by default).

    Attributes:
        gap: the margin by which the sampled category's logit beats the others in the soft
            sample (1.0: GST-1.0; the gst-p entry uses the probability-dependent gap instead).
    """

    gap: float = 1.0

    def validate(self) -> None:
        super().validate()
        _check_positive_numbers(self, "gap")


@dataclass(frozen=True)
class GumbelRaoOptions(EstimatorOptions):
    """Options of Gumbel-Rao (Paulus et al. 2021), with the temperature schedule of the
    Gumbel-Softmax entries: ``tau = max(tau_minimum, tau_initial exp(-tau_rate t))``.

    Attributes:
        tau_initial: temperature at step 0.
        tau_rate: decay rate per step (0: a constant temperature tau_initial).
        tau_every: steps between temperature updates.
        tau_minimum: the temperature never goes below it (at most tau_initial).
        num_samples: discrete samples per example and step (loss evaluations).
        num_draws: conditional Gumbel draws averaged in the backward pass (K of GR-MCK; no
            loss evaluations).
    """

    tau_initial: float = 1.0
    tau_rate: float = 1e-4
    tau_every: int = 1000
    tau_minimum: float = 0.5
    num_samples: int = 1
    num_draws: int = 10

    def _temperature(self) -> GumbelSoftmaxOptions:
        return GumbelSoftmaxOptions(
            tau_initial=self.tau_initial,
            tau_rate=self.tau_rate,
            tau_every=self.tau_every,
            tau_minimum=self.tau_minimum,
            hard=True,
            num_samples=self.num_samples,
        )

    def validate(self) -> None:
        self._temperature().validate()
        _check_positive_ints(self, "num_draws")

    def schedule(self) -> ExponentialDecay | float:
        """The temperature: a schedule, or a float when ``tau_rate`` is 0."""
        return self._temperature().schedule()


@dataclass(frozen=True)
class VIMCOOptions(EstimatorOptions):
    """Options of VIMCO (Mnih & Rezende 2016), for the multi-sample bound.

    Attributes:
        num_samples: samples K of the multi-sample bound (at least 2).
    """

    num_samples: int = 5

    def validate(self) -> None:
        _check_positive_ints(self, "num_samples")
        require(self.num_samples >= 2, "num_samples", "at least 2", self.num_samples)


@dataclass(frozen=True)
class UnorderedSetOptions(EstimatorOptions):
    """Options of the unordered-set estimator (Kool et al. 2020).

    Attributes:
        k: values drawn without replacement per example and step (2 to 6).
        max_support: largest support enumerated to draw them (larger factorized latents
            are drawn by stochastic beam search).
    """

    k: int = 4
    max_support: int = 2**16

    def validate(self) -> None:
        _check_positive_ints(self, "k", "max_support")
        require(2 <= self.k <= MAX_K, "k", f"an int from 2 to {MAX_K}", self.k)


OptionsT = TypeVar("OptionsT", bound=EstimatorOptions)


@dataclass(frozen=True)
class EstimatorEntry(Generic[OptionsT]):
    """A named estimator: a one-line description, typed options with defaults, a constructor.

    Attributes:
        description: one line for ``latentgrad list``.
        make: ``(options) -> Estimator``, a fresh estimator each call (its random
            initialization, if any, draws from torch's global RNG, which the runner has seeded).
        options: the default options (the paper settings), an instance of the entry's
            :class:`EstimatorOptions` subclass.
        latent: the latent family the experiment should use with it (``"softmax"``: its usual
            family; ``"sparsemax"``: ``SparsemaxCategorical``, whose support is summed exactly;
            ``"topk-sparsemax"``: ``TopKSparsemax`` over bit-vectors; ``"sparsemap"``:
            ``SparseMAP`` over bit-vectors).
        latent_options: ``(options) -> settings of the latent family`` (top-k's ``k``,
            SparseMAP's ``structures`` and ``budget``).
    """

    description: str
    make: Callable[[OptionsT], Estimator]
    options: OptionsT
    latent: LatentFamily = "softmax"
    latent_options: Callable[[OptionsT], dict[str, Any]] | None = None

    def build(self, options: OptionsT | None = None) -> Estimator:
        """A fresh estimator with ``options`` (default: :attr:`options`), validated first.

        Raises:
            InvalidConfigValue: (a ``ValueError``) naming an option out of range.
            TypeError: if ``options`` is not of this entry's options class.
        """
        chosen = self.options if options is None else options
        if type(chosen) is not type(self.options):
            raise TypeError(
                f"options must be {type(self.options).__name__}, got {type(chosen).__name__}"
            )
        chosen.validate()
        return self.make(chosen)

    @property
    def requires(self) -> tuple[Capability, ...]:
        """The capabilities the estimator asks of a distribution (built with the defaults)."""
        return tuple(self.build().requires)

    def applies_to(self, family: object) -> bool:
        """Whether a distribution (or a family class) declares everything the estimator needs.

        Example:
            >>> import latentgrad as lg
            >>> ESTIMATORS["relax"].applies_to(lg.KSubset), ESTIMATORS["relax"].applies_to(lg.Categorical)
            (True, False)
        """
        return declares(family, *self.requires)

    def resolve(self, name: str, options: OptionsT | None = None) -> ResolvedEstimator:
        """A fresh estimator with its name and latent family, as an experiment receives it."""
        chosen = self.options if options is None else options
        family = {} if self.latent_options is None else self.latent_options(chosen)
        return ResolvedEstimator(
            name, self.build(options), self.latent, others=_build_named, latent_options=family
        )


def _baseline(options: ScoreFunctionOptions) -> Any:
    if options.baseline == "moving-average":
        return MovingAverage(options.baseline_decay)
    if options.baseline == "cumulative-mean":
        return CumulativeMean()
    if options.baseline == "leave-one-out":
        return LeaveOneOut()
    if options.baseline == "independent-sample":
        return IndependentSample(options.baseline_samples, backprop=options.baseline_backprop)
    if options.baseline == "nvil":
        network = _nvil_network(options.nvil_hidden, options.nvil_layers, options.nvil_activation)
        return NVIL(network, decay=options.baseline_decay)
    return None


def _score_function(options: ScoreFunctionOptions) -> ScoreFunction:
    return ScoreFunction(options.num_samples, _baseline(options))


def _muprop(options: ScoreFunctionOptions) -> MuProp:
    return MuProp(options.num_samples, _baseline(options))


_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def _nvil_network(hidden: int = 100, layers: int = 1, activation: str = "tanh") -> nn.Module:
    """Mnih & Gregor's input-dependent baseline: ``layers`` hidden layers of ``hidden`` units
    (one tanh layer by default); the input width is lazy."""
    parts: list[nn.Module] = []
    for i in range(layers):
        parts += [nn.LazyLinear(hidden) if i == 0 else nn.Linear(hidden, hidden)]
        parts += [_ACTIVATIONS[activation]()]
    return nn.Sequential(*parts, nn.Linear(hidden, 1))


def _gumbel_softmax(options: GumbelSoftmaxOptions) -> GumbelSoftmax:
    return GumbelSoftmax(
        tau=options.schedule(),
        hard=options.hard,
        num_samples=options.num_samples,
        honest_value=options.honest_value,
        hard_at=options.hard_at,
    )


def _straight_through(options: StraightThroughOptions) -> StraightThrough:
    return StraightThrough(slope=options.schedule(), num_samples=options.num_samples)


#: Jang, Gu & Poole (2017): tau = max(0.5, exp(-r t)) updated every N steps (r=1e-4, N=1000).
_JANG = GumbelSoftmaxOptions()
_SF = ScoreFunctionOptions()

ESTIMATORS: dict[str, EstimatorEntry[Any]] = {
    "exact": EstimatorEntry(
        "exact sum over the support (Marginalize)",
        lambda o: Marginalize(o.max_support),
        SupportOptions(),
    ),
    "sf": EstimatorEntry("score function (REINFORCE), 1 sample", _score_function, _SF),
    "sf-ma": EstimatorEntry(
        "score function, moving-average baseline",
        _score_function,
        ScoreFunctionOptions(baseline="moving-average"),
    ),
    "sf-loo": EstimatorEntry(
        "score function, 4 samples, leave-one-out baseline",
        _score_function,
        ScoreFunctionOptions(num_samples=4, baseline="leave-one-out"),
    ),
    "sfe+": EstimatorEntry(
        "score function, baseline = loss of an independent sample (SFE+)",
        _score_function,
        ScoreFunctionOptions(baseline="independent-sample"),
    ),
    "nvil": EstimatorEntry(
        "score function, learned input-dependent baseline (NVIL)",
        _score_function,
        ScoreFunctionOptions(baseline="nvil"),
    ),
    "muprop": EstimatorEntry(
        "MuProp (Taylor baseline at the mean-field point)",
        lambda o: MuProp(o.num_samples),
        SamplesOptions(),
    ),
    "muprop-nvil": EstimatorEntry(
        "MuProp with a learned input-dependent baseline on the residual (MuProp+C+IDB)",
        _muprop,
        ScoreFunctionOptions(baseline="nvil"),
    ),
    "darn": EstimatorEntry(
        "DARN (Taylor signal at a fixed point, biased)",
        lambda o: DARN(o.num_samples),
        SamplesOptions(),
    ),
    "gs": EstimatorEntry(
        "Gumbel-Softmax, tau = max(0.5, exp(-1e-4 t)) every 1000 steps (biased)",
        _gumbel_softmax,
        _JANG,
    ),
    "st-gs": EstimatorEntry(
        "straight-through Gumbel-Softmax, same temperature schedule (biased)",
        _gumbel_softmax,
        dataclasses.replace(_JANG, hard=True),
    ),
    "st": EstimatorEntry("straight-through (biased)", _straight_through, StraightThroughOptions()),
    "annealed-st": EstimatorEntry(
        "slope-annealed straight-through, slope = min(5, 1 + 1e-4 t) (biased)",
        _straight_through,
        StraightThroughOptions(slope_rate=1e-4),
    ),
    # Successors of straight-through (issue 18): one loss evaluation per sample, biased.
    "reinmax": EstimatorEntry(
        "ReinMax: straight-through with Heun's second-order correction, tau = 1 (biased; "
        "unbiased for quadratic losses; Liu et al.)",
        lambda o: ReinMax(tau=o.tau, num_samples=o.num_samples),
        ReinMaxOptions(),
    ),
    "gumbel-rao": EstimatorEntry(
        "Gumbel-Rao: straight-through Gumbel-Softmax averaged over 10 conditional Gumbel draws, "
        "same temperature schedule as st-gs (biased; Paulus et al.)",
        lambda o: GumbelRao(tau=o.schedule(), num_draws=o.num_draws, num_samples=o.num_samples),
        GumbelRaoOptions(),
    ),
    "gst-1.0": EstimatorEntry(
        "gapped straight-through with gap 1 (GST-1.0), tau = 1 (biased; Fan et al.)",
        lambda o: GappedStraightThrough(gap=o.gap, tau=o.tau, num_samples=o.num_samples),
        GappedOptions(),
    ),
    "gst-p": EstimatorEntry(
        "gapped straight-through with the gap -log(1-p)/p of the sampled category (GST-p), "
        "tau = 1 (biased; Fan et al.)",
        lambda o: GappedStraightThrough(gap="p", tau=o.tau, num_samples=o.num_samples),
        ReinMaxOptions(),
    ),
    "local-reparam": EstimatorEntry(
        "local marginalization with common random numbers (Tokui & Sato)",
        lambda o: LocalReparam(o.num_samples),
        SamplesOptions(),
    ),
    "local-expectation": EstimatorEntry(
        "local expectation gradients (Titsias & Lázaro-Gredilla)",
        lambda o: LocalExpectation(o.num_samples),
        SamplesOptions(),
    ),
    "relax": EstimatorEntry(
        "RELAX with a learned MLP critic, for recursive Gumbel-max families (unbiased; "
        "Grathwohl et al.; Struminsky et al.)",
        lambda o: RELAX(MLPCritic(hidden=o.critic_hidden), o.num_samples),
        RelaxOptions(),
    ),
    # Issue 18: REBAR/RELAX on the Concrete relaxation and the antithetic DisARM/ARMS, for
    # categorical and Bernoulli latents (unbiased; their parameters train on the variance).
    "rebar": EstimatorEntry(
        "REBAR: Concrete-relaxation control variate, learned temperature and scale, 3 loss "
        "evaluations (unbiased; Tucker et al.)",
        lambda o: REBAR(
            o.num_samples,
            tau=o.tau_initial,
            eta=o.eta_initial,
            learn_tau=o.learn_tau,
            learn_eta=o.learn_eta,
        ),
        RebarOptions(),
    ),
    "relax-concrete": EstimatorEntry(
        "RELAX: MLP critic on the Concrete relaxation plus REBAR's term, learned (unbiased; "
        "Grathwohl et al.)",
        lambda o: ConcreteRELAX(
            MLPCritic(hidden=o.critic_hidden),
            o.num_samples,
            tau=o.tau_initial,
            loss_term=o.loss_term,
            eta=o.eta_initial,
        ),
        ConcreteRelaxOptions(),
    ),
    "disarm": EstimatorEntry(
        "DisARM: one antithetic pair, 2 loss evaluations (unbiased; Dong et al.; categorical "
        "latents through stick-breaking bits)",
        lambda o: DisARM(o.num_pairs),
        DisarmOptions(),
    ),
    "arms": EstimatorEntry(
        "ARMS: 4 samples coupled by a Dirichlet copula, leave-one-out signal (unbiased; "
        "Dimitriev & Zhou; categorical latents through stick-breaking bits)",
        lambda o: ARMS(o.num_samples),
        ArmsOptions(),
    ),
    "sum-and-sample": EstimatorEntry(
        "sum the top-1 value, sample the rest (Liu et al.)",
        lambda o: SumAndSample(k=o.k, max_support=o.max_support),
        SumAndSampleOptions(),
    ),
    "vimco": EstimatorEntry(
        "VIMCO: leave-one-out signals for the 5-sample bound -log mean exp(-loss) (IWAE "
        "objective; Mnih & Rezende)",
        lambda o: VIMCO(o.num_samples),
        VIMCOOptions(),
    ),
    "indecater": EstimatorEntry(
        "IndeCateR: each unit summed over its values, the others sampled (De Smet et al.)",
        lambda o: IndeCateR(o.num_samples),
        SamplesOptions(),
    ),
    "unordered-set": EstimatorEntry(
        "unordered-set estimator, 4 values without replacement, built-in baseline (Kool et al.)",
        lambda o: UnorderedSet(k=o.k, max_support=o.max_support),
        UnorderedSetOptions(),
    ),
    "sparsemax": EstimatorEntry(
        "sparsemax latent, exact sum over its small support (Correia et al.)",
        lambda o: Marginalize(o.max_support),
        SupportOptions(),
        latent="sparsemax",
    ),
    "topk-sparsemax": EstimatorEntry(
        "top-k sparsemax latent over bit-vectors, exact sum over its at most k structures "
        "(Correia et al.)",
        lambda o: Marginalize(max(o.k, 1)),
        TopKOptions(),
        latent="topk-sparsemax",
        latent_options=lambda o: {"k": o.k},
    ),
    "sparsemap": EstimatorEntry(
        "SparseMAP latent over free bit-vectors, exact sum over its few structures "
        "(Correia et al.)",
        lambda o: Marginalize(o.max_support),
        SupportOptions(),
        latent="sparsemap",
        latent_options=lambda o: {"structures": "free", "budget": None},
    ),
    "sparsemap-budget": EstimatorEntry(
        "SparseMAP latent over bit-vectors with at most budget ones, exact sum over its few "
        "structures (Correia et al.)",
        lambda o: Marginalize(o.max_support),
        SparseMAPBudgetOptions(),
        latent="sparsemap",
        latent_options=lambda o: {"structures": "budget", "budget": o.budget},
    ),
    # Struminsky et al. (2021): the score of the noise (E-) or of the execution trace (T-) of
    # a recursive Gumbel-max family, 3 samples per step as in their toy experiments; "+" adds
    # the leave-one-out baseline.
    "e-reinforce": EstimatorEntry(
        "E-REINFORCE: score of the exponential noise, 3 samples, no baseline (recursive "
        "Gumbel-max families; Struminsky et al.)",
        lambda o: EReinforce(o.num_samples, _baseline(o)),
        ScoreFunctionOptions(num_samples=3),
    ),
    "t-reinforce": EstimatorEntry(
        "T-REINFORCE: score of the execution trace, 3 samples, no baseline (recursive "
        "Gumbel-max families; Struminsky et al.)",
        lambda o: TReinforce(o.num_samples, _baseline(o)),
        ScoreFunctionOptions(num_samples=3),
    ),
    "e-reinforce+": EstimatorEntry(
        "E-REINFORCE+: score of the exponential noise, 3 samples, leave-one-out baseline",
        lambda o: EReinforce(o.num_samples, _baseline(o)),
        ScoreFunctionOptions(num_samples=3, baseline="leave-one-out"),
    ),
    "t-reinforce+": EstimatorEntry(
        "T-REINFORCE+: score of the execution trace, 3 samples, leave-one-out baseline",
        lambda o: TReinforce(o.num_samples, _baseline(o)),
        ScoreFunctionOptions(num_samples=3, baseline="leave-one-out"),
    ),
}


def supported_estimators(experiment: Experiment | None = None) -> list[str]:
    """The registered names, in registry order, that ``experiment`` supports (all: ``None``):
    those in its ``estimators`` list, if it has one, asking for a latent family among its
    ``latent_kinds``, whose needs its ``latent_families`` meet.

    Example:
        >>> supported_estimators()[:3]
        ['exact', 'sf', 'sf-ma']
    """
    if experiment is None:
        return list(ESTIMATORS)
    allowed = experiment.estimators
    families = experiment.latent_families
    kinds = experiment.latent_kinds
    return [
        name
        for name, entry in ESTIMATORS.items()
        if (allowed is None or name in allowed)
        and (kinds is None or entry.latent in kinds)
        and (families is None or all(entry.applies_to(f) for f in families))
    ]


def estimator_entry(name: str, experiment: Experiment | None = None) -> EstimatorEntry:
    """The registry entry of ``name``, checked against what ``experiment`` supports.

    Raises:
        UnknownEstimator: (a ``ValueError``) naming the valid estimators.

    Example:
        >>> estimator_entry("gs").latent
        'softmax'
        >>> estimator_entry("bogus")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        latentgrad.lab.registry.UnknownEstimator: unknown estimator 'bogus'; valid: exact, ...
    """
    valid = supported_estimators(experiment)
    if name not in valid:
        where = "" if experiment is None else f" for experiment {experiment.name!r}"
        raise UnknownEstimator(f"unknown estimator {name!r}{where}; valid: {', '.join(valid)}")
    return ESTIMATORS[name]


def _build_named(name: str) -> Estimator:
    """A fresh estimator of a registered name with its default options."""
    return estimator_entry(name).build()


def make_estimator(name: str, options: Mapping[str, object] | None = None) -> Estimator:
    """A fresh estimator by name, with ``options`` overriding its defaults (see
    :func:`resolve_options`); :class:`UnknownEstimator` listing the known names otherwise.

    Example:
        >>> type(make_estimator("st-gs")).__name__
        'GumbelSoftmax'
        >>> make_estimator("sf-loo", {"num_samples": 6}).num_samples
        6
    """
    entry = estimator_entry(name)
    return entry.build(resolve_options(name, options) if options else None)


def describe(name: str) -> str:
    """The one-line description of a registered estimator."""
    return estimator_entry(name).description


def option_fields(name: str) -> dict[str, Any]:
    """The options of estimator ``name`` and their types, in declaration order.

    Example:
        >>> list(option_fields("sum-and-sample"))
        ['k', 'max_support']
    """
    return config_fields(type(estimator_entry(name).options))


def resolve_options(name: str, overrides: Mapping[str, object] | None = None) -> Any:
    """The full options of estimator ``name``: its defaults with ``overrides`` applied, checked.

    Args:
        name: a registered estimator name.
        overrides: option values by name: typed values (JSON numbers, booleans, strings) or
            their command-line text (``"8"``, ``"true"``), as a sweep grid gives them.

    Returns:
        An instance of the entry's :class:`EstimatorOptions` subclass.

    Raises:
        UnknownEstimator: for an unknown ``name``.
        UnknownOption: (a ``ValueError``) naming an option the estimator does not have and the
            options it has.
        ConfigError: (a ``ValueError``) naming an option whose value has the wrong type.
        InvalidConfigValue: (a ``ValueError``) naming an option out of range.

    Example:
        >>> resolve_options("gs", {"tau_initial": 2}).tau_initial
        2.0
        >>> resolve_options("gs", {"samples": 2})
        Traceback (most recent call last):
        ...
        latentgrad.lab.registry.UnknownOption: estimator 'gs' has no option 'samples'; its options: tau_initial, tau_rate, tau_every, tau_minimum, hard, num_samples, honest_value, hard_at
        >>> resolve_options("sf", {"num_samples": "many"})
        Traceback (most recent call last):
        ...
        latentgrad.lab.config.ConfigError: bad value for option 'num_samples' of estimator 'sf': expected int, got 'many'
    """
    entry = estimator_entry(name)
    fields = config_fields(type(entry.options))
    values = config_to_dict(entry.options)
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise UnknownOption(
                f"estimator {name!r} has no option {key!r}; its options: {', '.join(fields) or 'none'}"
            )
        tp = fields[key]
        try:
            if isinstance(value, str) and tp is not str:
                values[key] = parse_text(tp, value)
            else:
                values[key] = coerce_value(tp, value)
        except ValueError as err:
            raise ConfigError(
                f"bad value for option {key!r} of estimator {name!r}: {err}"
            ) from None
    options = type(entry.options)(**values)
    options.validate()
    return options


def options_to_dict(options: EstimatorOptions) -> dict[str, Any]:
    """Options as a JSON-ready dict (what ``config.json`` holds under ``estimator_options``)."""
    return config_to_dict(options)


def options_differences(
    name: str, options: EstimatorOptions | Mapping[str, object]
) -> dict[str, Any]:
    """The options of ``name`` that differ from its defaults, ``{option: value}`` (JSON-ready).

    ``options`` may be an options instance or a (partial) mapping, resolved first.
    """
    resolved = options if isinstance(options, EstimatorOptions) else resolve_options(name, options)
    defaults = options_to_dict(estimator_entry(name).options)
    given = options_to_dict(resolved)
    return {k: v for k, v in given.items() if defaults.get(k) != v}


def options_hash(name: str, options: EstimatorOptions | Mapping[str, object]) -> str | None:
    """8 hex digits identifying the non-default options of ``name`` (``None``: all defaults).

    The hash is of the sorted JSON of :func:`options_differences`, so it does not change when
    options are added to an entry with defaults that keep today's behaviour.

    Example:
        >>> options_hash("sf-loo", {}) is None, len(options_hash("sf-loo", {"num_samples": 8}))
        (True, 8)
    """
    diff = options_differences(name, options)
    if not diff:
        return None
    text = json.dumps(diff, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def describe_options(name: str) -> str:
    """The options of ``name`` with their defaults, ``"num_samples=4 baseline=leave-one-out ..."``.

    Example:
        >>> describe_options("sum-and-sample")
        'k=1 max_support=65536'
    """
    parts = []
    for key, value in options_to_dict(estimator_entry(name).options).items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


ConfigT = TypeVar("ConfigT", bound=ExperimentConfig)


def with_resolved_options(config: ConfigT, experiment: Experiment | None = None) -> ConfigT:
    """A copy of ``config`` whose ``estimator_options`` are the full resolved options.

    What a run records: every option of ``config.estimator``, the given ones checked, the
    others at the experiment's preset (:func:`resolve_config_options`) or their defaults.

    Raises:
        UnknownEstimator: if ``experiment`` (or the registry) does not know the estimator.
        UnknownOption, ConfigError, InvalidConfigValue: see :func:`resolve_options`.

    Example:
        >>> config = with_resolved_options(ExperimentConfig(estimator="sf-loo"))
        >>> config.estimator_options["num_samples"], config.estimator_options["baseline"]
        (4, 'leave-one-out')
    """
    estimator_entry(config.estimator, experiment)
    options = resolve_config_options(config)
    return dataclasses.replace(config, estimator_options=options_to_dict(options))


def resolve_config_options(
    config: ExperimentConfig, given: Mapping[str, object] | None = None
) -> Any:
    """:func:`resolve_options` of ``config.estimator`` with the experiment's preset for it
    (:meth:`~latentgrad.lab.experiment.ExperimentConfig.preset_estimator_options`) under the
    given options (``given``, by default ``config.estimator_options``).

    A preset option that the given ones make invalid is dropped: a preset of the NVIL network
    gives way once the baseline is changed to one that has no network.

    Raises:
        UnknownEstimator, UnknownOption, ConfigError, InvalidConfigValue: see
        :func:`resolve_options` (an error of a given option, never of a preset one).

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Paper(ExperimentConfig):
        ...     def preset_estimator_options(self):
        ...         return {"nvil": {"nvil_hidden": 512}}
        >>> resolve_config_options(Paper(estimator="nvil")).nvil_hidden
        512
        >>> resolve_config_options(Paper(estimator="nvil"), {"nvil_hidden": 7}).nvil_hidden
        7
        >>> resolve_config_options(Paper(estimator="nvil"), {"baseline": "none"}).nvil_hidden
        100
    """
    preset = dict(config.preset_estimator_options().get(config.estimator, {}))
    chosen = dict(config.estimator_options if given is None else given)
    while True:
        try:
            return resolve_options(config.estimator, {**preset, **chosen})
        except InvalidConfigValue as err:
            if err.field not in preset or err.field in chosen:
                raise
            del preset[err.field]
