"""One registry of small examples of every family and every estimator, for contract tests.

As ``torch.distributions``' tests are driven by their ``EXAMPLES``, latentgrad's generic tests
(shapes, ``expand``, the law against :func:`~latentgrad.testing.brute_force_support`,
unbiasedness against :func:`~latentgrad.testing.exact_gradient`, ``no_grad``, dtypes, extreme
scores) iterate over :data:`FAMILY_EXAMPLES` and :data:`ESTIMATOR_EXAMPLES`. Add your own family
or estimator to a copy of these lists to run the same contract on it.

Which estimator applies to which family is read from the family's declared capability flags
(``has_noise``, ``has_relaxation``, ``has_trace``, ...): an :class:`EstimatorExample` lists the
flags it needs and :func:`compatible` checks them.

Example:
    >>> from latentgrad.testing.examples import compatible, estimator_examples, family_examples
    >>> [f.name for f in family_examples(capability="has_trace")][:2]
    ['ksubset', 'plackett-luce']
    >>> gs = estimator_examples(names=["gumbel-softmax"])[0]
    >>> gs.kind, sorted(gs.needs)
    ('biased', ['has_noise', 'has_relaxation'])
    >>> q = family_examples(names=["categorical"])[0].dist()
    >>> compatible(gs, q), q.batch_shape
    (True, torch.Size([2]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from latentgrad import distributions as d
from latentgrad import estimators as e

F64 = torch.float64
_INF = float("inf")

Kind = Literal["exact", "unbiased", "biased"]


@dataclass(frozen=True)
class FamilyExample:
    """A small instance of a family: a batch of parameters and how to build the distribution.

    Attributes:
        name: identifier (a pytest id), e.g. ``"categorical-neg-inf"``.
        family: the family it instantiates, e.g. ``"categorical"`` (several examples may share
            it: :func:`family_examples` with ``one_per_family=True`` keeps the first).
        params: the parameters in float64, with a batch dim of 2 and ``-inf`` entries where the
            family allows them.
        make: ``params -> distribution`` (any dtype, any extra leading batch dims).
        infinite: which infinite parameters the family accepts: ``"none"``, ``"-inf"`` (absent
            items, impossible categories) or ``"+-inf"`` (bits that are surely on or off).
    """

    name: str
    family: str
    params: Tensor
    make: Callable[[Tensor], Distribution]
    infinite: Literal["none", "-inf", "+-inf"] = "-inf"

    def dist(
        self,
        dtype: torch.dtype = F64,
        requires_grad: bool = False,
        device: torch.device | str | None = None,
    ) -> Any:
        """The distribution at :attr:`params` cast to ``dtype`` and moved to ``device`` (default:
        where :attr:`params` are), a fresh leaf if ``requires_grad``."""
        return self.make(self.leaf(dtype, requires_grad, device))

    def leaf(
        self,
        dtype: torch.dtype = F64,
        requires_grad: bool = False,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """A copy of :attr:`params` in ``dtype`` on ``device`` (default: where they are)."""
        params = self.params.to(device=device, dtype=dtype)
        return params.clone().requires_grad_(requires_grad)

    def __repr__(self) -> str:
        return f"FamilyExample({self.name!r})"


@dataclass(frozen=True)
class EstimatorExample:
    """How to build an estimator for a distribution, and what to expect of it.

    Attributes:
        name: identifier (a pytest id).
        group: the estimators it is tested with (``"score-function"``, ``"baseline"``,
            ``"trace"``, ``"relaxed"``, ``"local"``, ``"enumeration"``, ``"muprop"``,
            ``"control-variate"``, ``"antithetic"``, ``"multi-sample"``).
        make: ``(dist, **overrides) -> estimator``; ``dist`` sizes estimators with parts of
            their own (RELAX's critic); ``overrides`` are constructor arguments (e.g. ``tau``).
        kind: ``"exact"`` (the expectation and its gradient), ``"unbiased"`` (for any loss)
            or ``"biased"``.
        needs: the capability flags a family must declare.
        num_samples: ``S`` of ``per_sample``.
        stateful: whether calls change the estimator (running averages, learned baselines).
        temperature: the constructor argument that sets a temperature (``"tau"``, ``"slope"``),
            for tests that sweep it; ``None`` if there is none.
        objective: what ``kind`` refers to: ``"expectation"``, ``E_q[loss(z)]`` and its
            gradient (every estimator but VIMCO), or ``"multi-sample"``, the ``K``-sample bound
            ``E[-log (1/K) sum_k exp(-loss(z_k))]`` and its gradient, ``K`` the built
            estimator's ``num_samples`` (:class:`~latentgrad.VIMCO`, whose ``value`` is the
            bound, not a mean loss; see :func:`~latentgrad.testing.exact_multisample_bound`).
    """

    name: str
    group: str
    make: Callable[..., Any]
    kind: Kind
    needs: frozenset[str] = field(default_factory=frozenset)
    num_samples: int = 1
    stateful: bool = False
    temperature: str | None = None
    objective: Literal["expectation", "multi-sample"] = "expectation"

    def __repr__(self) -> str:
        return f"EstimatorExample({self.name!r})"


def _seeded(seed: int, *shape: int) -> Tensor:
    """Standard normals drawn on the CPU (the same numbers everywhere), on torch's default
    device."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=F64, device="cpu")
    return x.to(torch.empty(()).device)


def _graph(seed: int, n: int, absent: tuple[int, int] | None) -> Tensor:
    s = _seeded(seed, 2, n, n)
    if absent is not None:
        s[1, absent[0], absent[1]] = -_INF
    return s


def _categorical(p: Tensor) -> Distribution:
    return d.Categorical(logits=p)


def _bernoulli(p: Tensor) -> Distribution:
    return d.Bernoulli(logits=p)


FAMILY_EXAMPLES: list[FamilyExample] = [
    FamilyExample(
        "categorical",
        "categorical",
        torch.tensor(
            [[0.5, -1.0, 0.2, 1.0, -0.3, 0.8], [0.1, 0.4, -0.6, 0.0, 1.2, -0.9]], dtype=F64
        ),
        _categorical,
    ),
    FamilyExample(
        "categorical-neg-inf",
        "categorical",
        torch.tensor(
            [[0.5, -_INF, 0.2, 1.0, -_INF, -0.7], [-_INF, 0.3, 0.0, -_INF, 1.1, 0.4]], dtype=F64
        ),
        _categorical,
    ),
    FamilyExample(
        "bernoulli",
        "bernoulli",
        torch.tensor([[0.3, -0.5, 1.2], [-1.0, 0.8, 0.1]], dtype=F64),
        _bernoulli,
        infinite="+-inf",
    ),
    FamilyExample(
        "independent-categorical",
        "independent-categorical",
        torch.tensor(
            [[[0.4, -0.3, 0.0], [1.0, -1.0, 0.5]], [[-0.2, 0.6, -_INF], [0.3, 0.0, -0.8]]],
            dtype=F64,
        ),
        lambda p: d.Categorical(logits=p).to_event(1),
    ),
    FamilyExample(
        "independent-bernoulli",
        "independent-bernoulli",
        torch.tensor([[[0.4, -0.3], [1.0, -1.0]], [[-0.2, 0.6], [0.3, 0.0]]], dtype=F64),
        lambda p: d.Bernoulli(logits=p).to_event(1),
        infinite="+-inf",
    ),
    FamilyExample(
        "sparsemax-categorical",
        "sparsemax-categorical",
        torch.tensor([[2.0, 1.5, -1.0, 0.0, 1.8], [0.1, 0.2, 0.3, -_INF, 0.25]], dtype=F64),
        lambda p: d.SparsemaxCategorical(p),
    ),
    FamilyExample(
        "topk-sparsemax",
        "topk-sparsemax",
        torch.tensor([[1.0, -0.2, 0.3], [0.5, 0.4, -0.1]], dtype=F64),
        lambda p: d.TopKSparsemax(p, k=8),
        infinite="none",
    ),
    FamilyExample(
        "ksubset",
        "ksubset",
        torch.tensor([[0.5, -0.3, 1.0, 0.0, -1.0], [0.2, -_INF, -0.6, 0.9, 0.1]], dtype=F64),
        lambda p: d.KSubset(p, k=3),
    ),
    FamilyExample(
        "plackett-luce",
        "plackett-luce",
        torch.tensor([[0.3, -0.8, 1.2, 0.1], [0.0, 0.5, -0.4, 2.0]], dtype=F64),
        d.PlackettLuce,
        infinite="none",
    ),
    FamilyExample("spanning-tree", "spanning-tree", _graph(3, 4, (0, 3)), d.SpanningTree),
    FamilyExample(
        "arborescence", "arborescence", _graph(4, 4, (2, 1)), lambda p: d.Arborescence(p, root=0)
    ),
    FamilyExample(
        "binary-tree",
        "binary-tree",
        _seeded(5, 2, 4),
        d.BinaryTree,
        infinite="none",
    ),
    FamilyExample(
        "matching",
        "matching",
        _seeded(6, 2, 3, 3),
        d.Matching,
        infinite="none",
    ),
]
"""Every family at a small size (batch of 2); the first example of each family is its base."""


class WithContext:
    """Calls ``estimator`` with a fixed input ``x`` broadcast to the distribution's batch shape
    (for input-dependent baselines such as :class:`~latentgrad.NVIL`)."""

    def __init__(self, estimator: Any, x: Tensor) -> None:
        self.estimator = estimator
        self.x = x

    def __call__(
        self, dist: Distribution, loss_fn: e.LossFn, *, context: Tensor | None = None
    ) -> e.Estimate:
        x = self.x.expand(*dist.batch_shape, self.x.shape[-1])
        return self.estimator(dist, loss_fn, context=x)

    def __repr__(self) -> str:
        return f"WithContext({self.estimator!r})"


def _running_baseline(name: str, make: Callable[[], e.Baseline]) -> EstimatorExample:
    """A score function with 2 samples and a baseline that keeps a running statistic."""
    return EstimatorExample(
        name,
        "baseline",
        lambda q, **kw: e.ScoreFunction(2, baseline=make(), **kw),
        "unbiased",
        num_samples=2,
        stateful=True,
    )


def _gumbel_softmax(name: str, **options: Any) -> EstimatorExample:
    """Gumbel-Softmax at tau 0.7 with 3 samples and ``options``."""
    return EstimatorExample(
        name,
        "relaxed",
        lambda q, **kw: e.GumbelSoftmax(**{"tau": 0.7, "num_samples": 3, **options, **kw}),
        "biased",
        _RELAXED,
        num_samples=3,
        temperature="tau",
    )


def _nvil(dist: Distribution, variance_normalization: bool = False) -> WithContext:
    g = torch.Generator().manual_seed(7)
    net = nn.Linear(3, 1).double()
    with torch.no_grad():  # seeded on the CPU: the same numbers on every device
        net.weight.copy_(torch.randn(1, 3, generator=g, dtype=F64, device="cpu"))
    x = torch.randn(3, generator=g, dtype=F64, device="cpu").to(net.weight.device)
    return WithContext(e.ScoreFunction(2, baseline=e.NVIL(net, variance_normalization)), x)


def _relax(dist: Any, num_samples: int = 1) -> Any:
    critic = e.MLPCritic(dist.num_items, hidden=8).to(F64)
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():  # a random critic: its terms must cancel in expectation
        for p in critic.parameters():  # drawn on the CPU: the same numbers on every device
            p.copy_(
                torch.empty(p.shape, dtype=p.dtype, device="cpu").normal_(0.0, 0.5, generator=g)
            )
    return e.RELAX(critic, num_samples=num_samples)


def _random_weights(module: nn.Module, seed: int) -> nn.Module:
    """``module`` in float64 with N(0, 0.5^2) weights drawn on the CPU (the same numbers on
    every device): a random critic, whose terms must cancel in expectation."""
    module = module.to(F64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(
                torch.empty(p.shape, dtype=p.dtype, device="cpu").normal_(0.0, 0.5, generator=g)
            )
    return module


def _concrete_relax(dist: Any, **kw: Any) -> Any:
    # A sized critic (no lazy first layer, so calls do not change the estimator).
    critic = _random_weights(e.MLPCritic(dist.event_shape.numel(), hidden=8), seed=9)
    options = {"num_samples": 2, "tau": 0.7, "loss_term": True, "eta": 0.6, **kw}
    return e.ConcreteRELAX(critic, **options).to(F64)


_RELAXED = frozenset({"has_noise", "has_relaxation"})
_TRACE = frozenset({"has_trace"})
_ENUM = frozenset({"has_enumerate_support"})
_LOGITS = frozenset({"has_logits"})
_CONCRETE = frozenset({"has_logits", "has_relaxation"})

ESTIMATOR_EXAMPLES: list[EstimatorExample] = [
    EstimatorExample(
        "marginalize", "enumeration", lambda q, **kw: e.Marginalize(**kw), "exact", _ENUM
    ),
    EstimatorExample(
        "sum-and-sample-k1",
        "enumeration",
        lambda q, **kw: e.SumAndSample(k=1, **kw),
        "unbiased",
        _ENUM,
    ),
    EstimatorExample(
        "sum-and-sample-k2",
        "enumeration",
        lambda q, **kw: e.SumAndSample(k=2, **kw),
        "unbiased",
        _ENUM,
    ),
    EstimatorExample(
        "score-function",
        "score-function",
        lambda q, **kw: e.ScoreFunction(2, **kw),
        "unbiased",
        num_samples=2,
    ),
    _running_baseline("moving-average", lambda: e.MovingAverage(decay=0.8)),
    _running_baseline("cumulative-mean", e.CumulativeMean),
    EstimatorExample(
        "leave-one-out",
        "baseline",
        lambda q, **kw: e.ScoreFunction(3, baseline=e.LeaveOneOut(), **kw),
        "unbiased",
        num_samples=3,
    ),
    EstimatorExample(
        "independent-sample",
        "baseline",
        lambda q, **kw: e.ScoreFunction(1, baseline=e.IndependentSample(1), **kw),
        "unbiased",
    ),
    EstimatorExample("nvil", "baseline", _nvil, "unbiased", num_samples=2, stateful=True),
    EstimatorExample(
        "t-reinforce", "trace", lambda q, **kw: e.TReinforce(1, **kw), "unbiased", _TRACE
    ),
    EstimatorExample(
        "e-reinforce", "trace", lambda q, **kw: e.EReinforce(1, **kw), "unbiased", _TRACE
    ),
    EstimatorExample(
        "t-reinforce+",
        "trace",
        lambda q, **kw: e.TReinforce(3, e.LeaveOneOut(), **kw),
        "unbiased",
        _TRACE,
        num_samples=3,
    ),
    EstimatorExample(
        "e-reinforce+",
        "trace",
        lambda q, **kw: e.EReinforce(3, e.LeaveOneOut(), **kw),
        "unbiased",
        _TRACE,
        num_samples=3,
    ),
    EstimatorExample(
        "relax",
        "trace",
        _relax,
        "unbiased",
        frozenset({"has_trace", "has_conditional_noise"}),
        stateful=True,
    ),
    EstimatorExample(
        "relax-k2",
        "trace",
        lambda q, **kw: _relax(q, **{"num_samples": 2, **kw}),
        "unbiased",
        frozenset({"has_trace", "has_conditional_noise"}),
        num_samples=2,
        stateful=True,
    ),
    _gumbel_softmax("gumbel-softmax"),
    _gumbel_softmax("gumbel-softmax-dishonest", honest_value=False),
    _gumbel_softmax("gumbel-softmax-hard", hard=True),
    _gumbel_softmax("gumbel-softmax-mode", hard=True, hard_at="mode"),
    EstimatorExample(
        "straight-through",
        "relaxed",
        lambda q, **kw: e.StraightThrough(**{"num_samples": 3, **kw}),
        "biased",
        frozenset({"has_mean_field"}),
        num_samples=3,
    ),
    EstimatorExample(
        "straight-through-slope",
        "relaxed",
        lambda q, **kw: e.StraightThrough(**{"slope": 2.0, "num_samples": 3, **kw}),
        "biased",
        frozenset({"has_mean_field", "has_logits"}),
        num_samples=3,
        temperature="slope",
    ),
    EstimatorExample(
        "local-reparam",
        "local",
        lambda q, **kw: e.LocalReparam(**{"num_samples": 1, **kw}),
        "unbiased",
        frozenset({"has_local_variants", "has_noise"}),
    ),
    EstimatorExample(
        "local-reparam-3",
        "local",
        lambda q, **kw: e.LocalReparam(**{"num_samples": 3, **kw}),
        "unbiased",
        frozenset({"has_local_variants", "has_noise"}),
        num_samples=3,
    ),
    EstimatorExample(
        "local-expectation",
        "local",
        lambda q, **kw: e.LocalExpectation(**{"num_samples": 2, **kw}),
        "unbiased",
        frozenset({"has_local_variants", "has_noise"}),
        num_samples=2,
    ),
    EstimatorExample(
        "muprop",
        "muprop",
        lambda q, **kw: e.MuProp(**{"num_samples": 2, **kw}),
        "unbiased",
        frozenset({"has_mean_field"}),
        num_samples=2,
    ),
    EstimatorExample(
        "darn",
        "muprop",
        lambda q, **kw: e.DARN(**{"num_samples": 2, **kw}),
        "biased",
        frozenset({"has_mean_field", "has_logits"}),
        num_samples=2,
    ),
    # The successors of issue 18. The straight-through ones, REBAR/RELAX on the Concrete
    # relaxation and DisARM/ARMS take a Categorical or a Bernoulli (or to_event of them) only:
    # their `needs` (has_logits) are declared by exactly those families.
    EstimatorExample(
        "reinmax",
        "relaxed",
        lambda q, **kw: e.ReinMax(**{"tau": 1.0, "num_samples": 3, **kw}),
        "biased",
        _LOGITS,
        num_samples=3,
        temperature="tau",
    ),
    EstimatorExample(
        "gumbel-rao",
        "relaxed",
        lambda q, **kw: e.GumbelRao(**{"tau": 0.7, "num_draws": 4, "num_samples": 3, **kw}),
        "biased",
        _LOGITS,
        num_samples=3,
        temperature="tau",
    ),
    EstimatorExample(
        "gst-1.0",
        "relaxed",
        lambda q, **kw: e.GappedStraightThrough(**{"gap": 1.0, "num_samples": 3, **kw}),
        "biased",
        _LOGITS,
        num_samples=3,
        temperature="tau",
    ),
    EstimatorExample(
        "gst-p",
        "relaxed",
        lambda q, **kw: e.GappedStraightThrough(**{"gap": "p", "num_samples": 3, **kw}),
        "biased",
        _LOGITS,
        num_samples=3,
        temperature="tau",
    ),
    EstimatorExample(
        "rebar",
        "control-variate",
        lambda q, **kw: e.REBAR(**{"num_samples": 2, "tau": 0.7, "eta": 0.8, **kw}).to(F64),
        "unbiased",
        _CONCRETE,
        num_samples=2,
    ),
    EstimatorExample(
        "relax-concrete", "control-variate", _concrete_relax, "unbiased", _CONCRETE, num_samples=2
    ),
    EstimatorExample(
        "disarm",
        "antithetic",
        lambda q, **kw: e.DisARM(**{"num_pairs": 2, **kw}),
        "unbiased",
        _LOGITS,
        num_samples=2,
    ),
    EstimatorExample(
        "arms",
        "antithetic",
        lambda q, **kw: e.ARMS(**{"num_samples": 3, **kw}),
        "unbiased",
        _LOGITS,
        num_samples=3,
    ),
    EstimatorExample(
        "indecater",
        "local",
        lambda q, **kw: e.IndeCateR(**{"num_samples": 2, **kw}),
        "unbiased",
        frozenset({"has_local_variants"}),
        num_samples=2,
    ),
    EstimatorExample(
        "unordered-set",
        "enumeration",
        lambda q, **kw: e.UnorderedSet(**{"k": 3, **kw}),
        "unbiased",
        _ENUM,
    ),
    # VIMCO estimates the K-sample bound (K = num_samples), not E_q[loss]: `objective` says so,
    # and its one per_sample row is the whole estimate.
    EstimatorExample(
        "vimco",
        "multi-sample",
        lambda q, **kw: e.VIMCO(**{"num_samples": 2, **kw}),
        "unbiased",
        objective="multi-sample",
    ),
]
"""Every estimator, with the constructor arguments the contract tests use."""


def compatible(estimator: EstimatorExample, dist: Distribution) -> bool:
    """Whether ``dist`` declares every capability flag ``estimator`` needs (and, for
    ``has_enumerate_support``, whether this instance's support is small enough)."""
    for flag in estimator.needs:
        if not bool(getattr(dist, flag, False)):
            return False
    if "has_enumerate_support" in estimator.needs:
        can = getattr(dist, "can_enumerate_support", None)
        return bool(can()) if can is not None else True
    return True


def _select(items: Sequence[Any], names: Sequence[str] | None, what: str) -> list[Any]:
    if names is None:
        return list(items)
    known = {item.name: item for item in items}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {what} example(s) {unknown}; the examples are {sorted(known)}")
    return [known[n] for n in names]


def family_examples(
    *,
    capability: str | Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    one_per_family: bool = False,
) -> list[FamilyExample]:
    """The family examples that declare ``capability`` (one flag or several), or those named.

    Args:
        capability: capability flag(s) every returned example's distribution declares.
        names: the examples to return, in this order (``ValueError`` for an unknown name).
        one_per_family: keep only the first example of each family.
    """
    chosen = _select(FAMILY_EXAMPLES, names, "family")
    if capability is not None:
        flags = [capability] if isinstance(capability, str) else list(capability)
        chosen = [f for f in chosen if all(bool(getattr(f.dist(), c, False)) for c in flags)]
    if one_per_family:
        first: dict[str, FamilyExample] = {}
        for f in chosen:
            first.setdefault(f.family, f)
        chosen = list(first.values())
    return chosen


#: The single-layer examples of categorical and bit units (batched, one with a ``-inf`` logit,
#: one of independent units) that the sampling estimators' tests check against enumeration.
UNIT_FAMILIES: tuple[str, ...] = (
    "categorical",
    "categorical-neg-inf",
    "bernoulli",
    "independent-categorical",
)


def family_examples_by_name(names: Sequence[str] = UNIT_FAMILIES) -> dict[str, FamilyExample]:
    """The family examples ``names`` (default :data:`UNIT_FAMILIES`) keyed by their names.

    Example:
        >>> sorted(family_examples_by_name(["bernoulli", "categorical"]))
        ['bernoulli', 'categorical']
    """
    return {f.name: f for f in family_examples(names=names)}


def estimator_examples(
    *,
    group: str | None = None,
    kind: Kind | None = None,
    names: Sequence[str] | None = None,
) -> list[EstimatorExample]:
    """The estimator examples of ``group`` and ``kind`` (all when ``None``), or those named."""
    chosen = _select(ESTIMATOR_EXAMPLES, names, "estimator")
    return [
        x
        for x in chosen
        if (group is None or x.group == group) and (kind is None or x.kind == kind)
    ]


def pairs(
    estimators: Sequence[EstimatorExample] | None = None,
    families: Sequence[FamilyExample] | None = None,
) -> list[tuple[EstimatorExample, FamilyExample]]:
    """Every compatible (estimator, family) pair, estimators first."""
    ests = ESTIMATOR_EXAMPLES if estimators is None else estimators
    fams = FAMILY_EXAMPLES if families is None else families
    return [(x, f) for x in ests for f in fams if compatible(x, f.dist())]


__all__ = [
    "ESTIMATOR_EXAMPLES",
    "FAMILY_EXAMPLES",
    "UNIT_FAMILIES",
    "EstimatorExample",
    "FamilyExample",
    "WithContext",
    "compatible",
    "estimator_examples",
    "family_examples",
    "family_examples_by_name",
    "pairs",
]
