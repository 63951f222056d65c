"""Bad inputs for every public entry point, and the argument each error must name.

Generated from the registry of examples (:data:`~latentgrad.testing.examples.FAMILY_EXAMPLES`
and :data:`~latentgrad.testing.examples.ESTIMATOR_EXAMPLES`) plus the entry points the registry
does not hold (relaxed families, SparseMAP, the mappings and their oracles). Each
:class:`BadInput` is one call that must raise ``ValueError`` or ``TypeError`` whose message
names :attr:`BadInput.argument`: NaN and infinite parameters, the wrong shape, dtype or type,
empty where an entry point needs entries, ``k`` out of range, ``tau <= 0``, a value outside the
support, and tensors on different devices (``meta`` against ``cpu``).

Example:
    >>> from latentgrad.testing.bad_inputs import bad_inputs, check_bad_input
    >>> cases = bad_inputs()
    >>> case = next(c for c in cases if c.name == "Categorical/nan-first")
    >>> case.argument
    'logits'
    >>> check_bad_input(case)  # None: the call raised ValueError naming logits
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from latentgrad import distributions as d
from latentgrad import estimators as e
from latentgrad import mappings as m
from latentgrad.mappings import oracles as o
from latentgrad.testing.examples import (
    ESTIMATOR_EXAMPLES,
    FAMILY_EXAMPLES,
    EstimatorExample,
    FamilyExample,
    WithContext,
    compatible,
)

F64 = torch.float64
_NAN = float("nan")
_INF = float("inf")


@dataclass(frozen=True)
class BadInput:
    """One call with a bad argument.

    Attributes:
        name: ``"<entry>/<kind>"``, a pytest id.
        entry: the public entry point (``"Categorical"``, ``"ScoreFunction"``, ``"sparsemax"``,
            ``"KSubset.log_prob"``).
        kind: what is wrong: ``"nan"``, ``"inf"``, ``"shape"``, ``"dtype"``, ``"type"``,
            ``"empty"``, ``"k"``, ``"tau"``, ``"range"``, ``"support"``, ``"device"``.
        call: makes the call (it must raise).
        argument: the name the error message must contain (as a word).
        also: other names that may stand for it (e.g. ``k`` for an empty ``scores`` of
            :class:`~latentgrad.KSubset`, whose ``k`` then has no valid value).
    """

    name: str
    entry: str
    kind: str
    call: Callable[[], object]
    argument: str
    also: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"BadInput({self.name!r})"


def check_bad_input(case: BadInput) -> None:
    """Run ``case.call`` and raise ``AssertionError`` unless it raises ``ValueError`` or
    ``TypeError`` whose message names ``case.argument`` (or one of ``case.also``)."""
    try:
        case.call()
    except (ValueError, TypeError) as err:
        message = str(err)
        names = (case.argument, *case.also)
        if not any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", message) for n in names):
            raise AssertionError(
                f"{case.name}: {type(err).__name__} does not name {' or '.join(names)}: {message!r}"
            ) from err
        return
    except Exception as err:  # any other exception is a finding
        raise AssertionError(
            f"{case.name}: expected ValueError/TypeError naming {case.argument}, got "
            f"{type(err).__name__}: {err}"
        ) from err
    raise AssertionError(f"{case.name}: no error (expected one naming {case.argument})")


# -- families -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Family:
    """What the generated cases need to know about a family's constructor."""

    entry: str
    params: Tensor
    make: Callable[[Any], Any]
    argument: str
    infinite: str  # "none", "-inf", "+-inf"
    event_dims: int = 1
    also_empty: tuple[str, ...] = ()


def _param_name(dist: Any) -> str:
    base = dist.base_dist if isinstance(dist, d.Independent) else dist
    return str(base._param_names[0]) if base._param_names else "logits"


def _entry_name(example: FamilyExample) -> str:
    dist = example.dist()
    if isinstance(dist, d.Independent):
        return f"Independent({type(dist.base_dist).__name__})"
    return type(dist).__name__


def _families() -> list[_Family]:
    out: list[_Family] = []
    seen: set[str] = set()
    for ex in FAMILY_EXAMPLES:
        if ex.family in seen:
            continue
        seen.add(ex.family)
        dist = ex.dist()
        base = dist.base_dist if isinstance(dist, d.Independent) else dist
        event_dims = (
            2 if isinstance(base, d.StructuredDistribution) and (base._score_event_dims == 2) else 1
        )
        also = ("k",) if isinstance(base, (d.KSubset, d.TopKSparsemax)) else ()
        out.append(
            _Family(_entry_name(ex), ex.params, ex.make, _param_name(dist), ex.infinite,
                    event_dims, also)
        )  # fmt: skip
    logits = torch.tensor([[0.5, -1.0, 0.2], [0.1, 0.4, -0.6]], dtype=F64)
    out += [
        _Family("RelaxedCategorical", logits, lambda p: d.RelaxedCategorical(p, 0.5), "logits",
                "none"),
        _Family("RelaxedBernoulli", logits, lambda p: d.RelaxedBernoulli(p, 0.5), "logits",
                "none"),
        _Family("SparseMAP", logits, lambda p: d.SparseMAP(p, o.BudgetBits(3, 2)), "scores",
                "none"),
    ]  # fmt: skip
    return out


def _with(params: Tensor, index: tuple[Any, ...], value: float) -> Tensor:
    p = params.clone()
    p[index] = value
    return p


def _family_cases(f: _Family) -> list[BadInput]:
    p, make, arg, entry = f.params, f.make, f.argument, f.entry
    first = (0,) * p.dim()
    # The last batch element, last event row, first event column: below the diagonal.
    lower = (*(-1,) * (p.dim() - 1), 0) if f.event_dims == 1 else (*(-1,) * (p.dim() - 2), -1, 0)
    diagonal = (*(-1,) * (p.dim() - 2), -1, -1)
    empty: tuple[Any, ...] = (..., *(slice(0, 0),) * f.event_dims)  # an empty event

    def case(
        kind: str, build: Callable[[], object], argument: str = arg, also: tuple[str, ...] = ()
    ) -> BadInput:
        return BadInput(f"{entry}/{kind}", entry, kind.split("-")[0], build, argument, also)

    cases = [
        case("nan-first", lambda: make(_with(p, first, _NAN))),
        case("nan-lower", lambda: make(_with(p, lower, _NAN))),
        case("dtype-long", lambda: make(p.round().long())),
        case("type-list", lambda: make(p.tolist())),
        case("shape-scalar", lambda: make(p[first])),
        case("empty-event", lambda: make(p[empty]), also=f.also_empty),
    ]  # fmt: skip
    if f.event_dims == 2:
        cases += [
            case("nan-diagonal", lambda: make(_with(p, diagonal, _NAN))),
            case("shape-not-square", lambda: make(p[..., :-1, :])),
            case("shape-vector", lambda: make(p[0, 0])),
        ]
    if f.infinite != "+-inf":
        cases.append(case("inf-pos", lambda: make(_with(p, lower, _INF))))
    if f.infinite == "none":
        cases.append(case("inf-neg", lambda: make(_with(p, first, -_INF))))
    return cases


def _value_cases(
    entry: str, dist: Callable[[], Any], bad: Sequence[tuple[str, Any]]
) -> list[BadInput]:
    """``log_prob`` of values outside the support, of the wrong shape or type, on meta."""
    name = f"{entry}.log_prob"

    def case(kind: str, value: Callable[[], Any]) -> BadInput:
        return BadInput(
            f"{name}/{kind}", name, kind.split("-")[0], lambda: dist().log_prob(value()), "value"
        )

    cases = [case(kind, functools.partial(_identity, v)) for kind, v in bad]
    cases += [
        case("type-list", lambda: dist().sample().tolist()),
        case("shape-event", lambda: dist().sample()[..., :-1]),
        BadInput(f"{name}/shape-batch", name, "shape",
                 lambda: dist().expand((2,)).log_prob(_lead(dist().sample(), 3, 3)), "value"),
        case("device-meta", lambda: dist().sample().to("meta")),
    ]  # fmt: skip
    return cases


def _identity(value: Any) -> Any:
    return value


def _lead(value: Tensor, *sizes: int) -> Tensor:
    """``value`` repeated along new leading dims of ``sizes``."""
    return value.reshape((1,) * len(sizes) + value.shape).expand(*sizes, *value.shape)


def _support_cases() -> list[BadInput]:
    """Values outside each family's support (the issue's cases and one or two per family)."""
    t = torch.tensor
    z4 = torch.zeros(4)
    ks = [("support-three", t([1.0, 1.0, 1.0, 0.0])), ("support-fraction", t([0.5, 1, 0.5, 0]))]
    pl = [("support-repeat", t([0, 0, 0])), ("support-out-of-bounds", t([0, 1, 5])),
          ("support-negative", t([0, -1, 2]))]  # fmt: skip
    star = t([[0.0, 1, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]])
    cycle = t([[0.0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]])
    upper = t([[0.0, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    arb_ok = t([[0.0, 1, 0], [0, 0, 1], [0, 0, 0]])
    arb_cycle = t([[0.0, 0, 0], [0, 0, 1], [0, 1, 0]])
    arb_into_root = t([[0.0, 1, 1], [1, 0, 0], [0, 0, 0]])
    bt_two_roots = t([[0.0, 0, 0], [0, 0, 0], [0, 1, 0]])
    bt_two_left = t([[0.0, 0, 0], [0, 0, 0], [1, 1, 0]])
    bt_not_interval = t([[0.0, 0, 1], [1, 0, 0], [0, 0, 0]])  # span of 0 is {0, 2}
    perm_bad = t([[1.0, 1, 0], [0, 0, 0], [0, 0, 1]])
    perm_frac = t([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1]])
    cases: list[BadInput] = []
    cases += _value_cases(
        "Categorical",
        lambda: d.Categorical(logits=t([0.0, 1.0, 2.0])),
        [("support-half", t([0.5, 0.5, 0.0])), ("support-zeros", t([0.0, 0.0, 0.0])),
         ("support-two-ones", t([1.0, 1.0, 0.0]))],
    )  # fmt: skip
    cases += _value_cases(
        "Bernoulli",
        lambda: d.Bernoulli(logits=t([0.0, 1.0, 2.0])),
        [("support-half", t([0.5, 1.0, 0.0])), ("support-two", t([2.0, 1.0, 0.0]))],
    )
    cases += _value_cases(
        "SparsemaxCategorical",
        lambda: d.SparsemaxCategorical(t([1.0, 0.5, -1.0])),
        [("support-half", t([0.5, 0.5, 0.0])), ("support-zeros", t([0.0, 0.0, 0.0]))],
    )
    cases += _value_cases("KSubset", lambda: d.KSubset(z4, k=2), ks)
    cases += _value_cases("PlackettLuce", lambda: d.PlackettLuce(torch.zeros(3)), pl)
    cases += _value_cases(
        "SpanningTree",
        lambda: d.SpanningTree(torch.zeros(4, 4)),
        [("support-cycle", cycle), ("support-asymmetric", upper),
         ("support-fraction", star * 0.5), ("support-diagonal", star + torch.eye(4))],
    )  # fmt: skip
    cases += _value_cases(
        "Arborescence",
        lambda: d.Arborescence(torch.zeros(3, 3), root=0),
        [("support-cycle", arb_cycle), ("support-into-root", arb_into_root),
         ("support-fraction", arb_ok * 0.5)],
    )  # fmt: skip
    cases += _value_cases(
        "BinaryTree",
        lambda: d.BinaryTree(torch.zeros(3)),
        [
            ("support-two-roots", bt_two_roots),
            ("support-two-left", bt_two_left),
            ("support-not-in-order", bt_not_interval),
        ],
    )
    cases += _value_cases(
        "Matching",
        lambda: d.Matching(torch.zeros(3, 3)),
        [("support-not-permutation", perm_bad), ("support-fraction", perm_frac)],
    )
    cases += _value_cases(
        "SparseMAP",
        lambda: d.SparseMAP(t([0.9, 0.6, -0.2, 0.1]), o.BudgetBits(4, 2)),
        [("support-fraction", t([0.5, 1.0, 0.0, 0.0])),
         ("support-over-budget", t([1.0, 1, 1, 0]))],
    )  # fmt: skip
    cases += _value_cases(
        "TopKSparsemax",
        lambda: d.TopKSparsemax(t([1.0, -0.2, 0.3]), k=4),
        [("support-fraction", t([0.5, 1.0, 0.0]))],
    )
    cases += _value_cases(
        "RelaxedCategorical",
        lambda: d.RelaxedCategorical(t([0.0, 1.0, 2.0]), 0.5),
        [("support-off-simplex", t([0.5, 0.6, 0.2])), ("support-negative", t([1.5, -0.5, 0.0])),
         ("support-nan", t([_NAN, 0.5, 0.5]))],
    )  # fmt: skip
    cases += _value_cases(
        "RelaxedBernoulli",
        lambda: d.RelaxedBernoulli(t([0.0, 1.0, 2.0]), 0.5),
        [("support-above-one", t([0.5, 1.5, 0.2])), ("support-negative", t([-0.1, 0.5, 0.2]))],
    )
    return cases


def _setting_cases() -> list[BadInput]:
    """Non-tensor settings of the families: ``k``, ``tau``, ``root``, oracles."""
    z = torch.zeros(2, 4, dtype=F64)
    sq = torch.zeros(2, 3, 3, dtype=F64)
    rows: list[tuple[str, str, Callable[[], object], str]] = [
        ("KSubset", "k-zero", lambda: d.KSubset(z, k=0), "k"),
        ("KSubset", "k-above-n", lambda: d.KSubset(z, k=5), "k"),
        ("KSubset", "k-float", lambda: d.KSubset(z, k=1.5), "k"),  # type: ignore[arg-type]
        ("KSubset", "k-too-few-present", lambda: d.KSubset(_with(z, (0, 0), -_INF), k=4),
         "scores"),
        ("SparsemaxCategorical", "k-zero", lambda: d.SparsemaxCategorical(z, k=0), "k"),
        ("TopKSparsemax", "k-zero", lambda: d.TopKSparsemax(z, k=0), "k"),
        ("TopKSparsemax", "range-budget", lambda: d.TopKSparsemax(z, k=2, structures="budget",
                                                                   budget=-1), "budget"),
        ("Arborescence", "range-root", lambda: d.Arborescence(sq, root=3), "root"),
        ("Arborescence", "range-root-negative", lambda: d.Arborescence(sq, root=-1), "root"),
        ("Arborescence", "type-root", lambda: d.Arborescence(sq, root=0.0), "root"),  # type: ignore[arg-type]
        ("Arborescence", "range-unreachable", lambda: d.Arborescence(
            _with(_with(sq, (..., 0, 1), -_INF), (..., 0, 2), -_INF)), "scores"),
        ("SpanningTree", "range-disconnected", lambda: d.SpanningTree(
            _with(_with(sq, (..., 0, 1), -_INF), (..., 0, 2), -_INF)), "scores"),
        ("SpanningTree", "shape-one-vertex", lambda: d.SpanningTree(torch.zeros(1, 1)), "scores"),
        ("Categorical", "type-both", lambda: d.Categorical(z, probs=z.exp()), "probs"),
        ("Categorical", "range-probs-negative", lambda: d.Categorical(probs=z - 1), "probs"),
        ("Categorical", "nan-probs", lambda: d.Categorical(probs=_with(z, (0, 0), _NAN)),
         "probs"),
        ("Bernoulli", "range-probs", lambda: d.Bernoulli(probs=z + 2), "probs"),
        ("RelaxedCategorical", "tau-zero", lambda: d.RelaxedCategorical(z, 0.0), "tau"),
        ("RelaxedCategorical", "tau-negative", lambda: d.RelaxedCategorical(z, -1.0), "tau"),
        ("RelaxedCategorical", "tau-nan", lambda: d.RelaxedCategorical(z, _NAN), "tau"),
        ("RelaxedBernoulli", "tau-zero", lambda: d.RelaxedBernoulli(z, 0.0), "tau"),
        ("RelaxedBernoulli", "tau-tensor", lambda: d.RelaxedBernoulli(z, "1"), "tau"),  # type: ignore[arg-type]
        ("Categorical.relaxed_from_noise", "tau-zero",
         lambda: d.Categorical(logits=z).relaxed_from_noise(torch.zeros(2, 4), 0.0), "tau"),
        ("Bernoulli.relaxed_from_noise", "tau-negative",
         lambda: d.Bernoulli(logits=z).relaxed_from_noise(torch.zeros(2, 4), -0.5), "tau"),
        ("SparseMAP", "type-oracle", lambda: d.SparseMAP(z, "budget"), "oracle"),
        ("SparseMAP", "shape-oracle", lambda: d.SparseMAP(z, o.FreeBits(3)), "oracle"),
        ("SparseMAP", "range-max-iter", lambda: d.SparseMAP(z, o.FreeBits(4), max_iter=0),
         "max_iter"),
        ("SparseMAP", "range-tol", lambda: d.SparseMAP(z, o.FreeBits(4), tol=-1.0), "tol"),
        ("Independent", "range-ndims", lambda: d.Categorical(logits=z).to_event(2),
         "reinterpreted_batch_ndims"),
    ]  # fmt: skip
    return [BadInput(f"{entry}/{kind}", entry, kind.split("-")[0], call, arg)
            for entry, kind, call, arg in rows]  # fmt: skip


# -- estimators ---------------------------------------------------------------------------------


def _first_dist(example: EstimatorExample) -> Any:
    for f in FAMILY_EXAMPLES:
        q = f.dist()
        if compatible(example, q):
            return q
    raise AssertionError(f"no family example fits {example.name}")  # pragma: no cover


def _estimator_cases(example: EstimatorExample) -> list[BadInput]:
    entry = example.name

    def good() -> Any:
        return _first_dist(example)

    def estimator() -> Any:
        est = example.make(good())
        return est.estimator if isinstance(est, WithContext) else est

    def call(dist: Callable[[], Any], loss_fn: Callable[[], Any]) -> Callable[[], object]:
        return lambda: example.make(good())(dist(), loss_fn())

    def losses(q: Any) -> Callable[[Tensor], Tensor]:
        n = len(q.event_shape)
        return lambda z: z.to(F64).flatten(z.dim() - n).sum(-1) if n else z.to(F64)

    def wrong_shape(z: Tensor) -> Tensor:
        return z.to(F64).sum()

    def wrong_dtype(z: Tensor) -> Tensor:
        return losses(good())(z).long()

    def not_tensor(z: Tensor) -> object:
        return 1.0

    missing = _missing_capability(example)
    rows: list[tuple[str, Callable[[], object], str]] = [
        ("type-dist", lambda: estimator()(torch.zeros(2, 3), losses(good())), "dist"),
        ("type-torch-dist", lambda: estimator()(
            torch.distributions.Normal(torch.zeros(2), 1.0), losses(good())), "dist"),
        ("type-loss-fn", call(good, lambda: "loss"), "loss_fn"),
        ("shape-loss", call(good, lambda: wrong_shape), "loss_fn"),
        ("dtype-loss", call(good, lambda: wrong_dtype), "loss_fn"),
        ("type-loss", call(good, lambda: not_tensor), "loss_fn"),
    ]  # fmt: skip
    if missing is not None:
        rows.append(("type-capability", lambda: estimator()(missing, losses(missing)), "dist"))
    return [BadInput(f"{entry}/{kind}", entry, kind.split("-")[0], fn, arg)
            for kind, fn, arg in rows]  # fmt: skip


def _missing_capability(example: EstimatorExample) -> Any:
    for f in FAMILY_EXAMPLES:
        q = f.dist()
        if not compatible(example, q):
            return q
    return None


def _estimator_setting_cases() -> list[BadInput]:
    nan = _NAN
    rows: list[tuple[str, str, Callable[[], object], str]] = [
        ("ScoreFunction", "range-num-samples", lambda: e.ScoreFunction(0), "num_samples"),
        ("ScoreFunction", "type-num-samples", lambda: e.ScoreFunction(1.5), "num_samples"),  # type: ignore[arg-type]
        ("ScoreFunction", "range-loo", lambda: e.ScoreFunction(1, baseline=e.LeaveOneOut()),
         "num_samples"),
        ("ScoreFunction", "type-baseline", lambda: e.ScoreFunction(2, baseline="mean"),  # type: ignore[arg-type]
         "baseline"),
        ("ScoreFunction", "range-score", lambda: e.ScoreFunction(2, score="exact"), "score"),  # type: ignore[arg-type]
        ("TReinforce", "range-num-samples", lambda: e.TReinforce(0), "num_samples"),
        ("EReinforce", "range-num-samples", lambda: e.EReinforce(-1), "num_samples"),
        ("GumbelSoftmax", "tau-zero", lambda: e.GumbelSoftmax(tau=0.0), "tau"),
        ("GumbelSoftmax", "tau-negative", lambda: e.GumbelSoftmax(tau=-1.0), "tau"),
        ("GumbelSoftmax", "tau-nan", lambda: e.GumbelSoftmax(tau=nan), "tau"),
        ("GumbelSoftmax", "range-num-samples", lambda: e.GumbelSoftmax(num_samples=0),
         "num_samples"),
        ("StraightThrough", "tau-slope", lambda: e.StraightThrough(slope=0.0), "slope"),
        ("StraightThrough", "range-num-samples", lambda: e.StraightThrough(num_samples=0),
         "num_samples"),
        ("LocalReparam", "range-num-samples", lambda: e.LocalReparam(0), "num_samples"),
        ("MuProp", "range-num-samples", lambda: e.MuProp(0), "num_samples"),
        ("DARN", "range-num-samples", lambda: e.DARN(0), "num_samples"),
        ("Marginalize", "range-max-support", lambda: e.Marginalize(max_support=0),
         "max_support"),
        ("SumAndSample", "k-zero", lambda: e.SumAndSample(k=0), "k"),
        ("SumAndSample", "k-float", lambda: e.SumAndSample(k=1.5), "k"),  # type: ignore[arg-type]
        ("Marginalize", "range-support", lambda: e.Marginalize(max_support=2)(
            d.Categorical(logits=torch.zeros(2, 3)), lambda z: z.sum(-1)), "max_support"),
        ("RELAX", "type-critic", lambda: e.RELAX("critic"), "critic"),  # type: ignore[arg-type]
        ("RELAX", "range-num-samples", lambda: e.RELAX(e.MLPCritic(3), num_samples=0),
         "num_samples"),
        ("MLPCritic", "range-num-items", lambda: e.MLPCritic(0), "num_items"),
        ("MovingAverage", "range-decay", lambda: e.MovingAverage(decay=1.5), "decay"),
        ("IndependentSample", "range-num-samples", lambda: e.IndependentSample(0),
         "num_samples"),
        ("NVIL", "type-network", lambda: e.NVIL("net"), "network"),  # type: ignore[arg-type]
    ]  # fmt: skip
    return [BadInput(f"{entry}/{kind}", entry, kind.split("-")[0], call, arg)
            for entry, kind, call, arg in rows]  # fmt: skip


# -- mappings -----------------------------------------------------------------------------------


def _mapping_cases() -> list[BadInput]:
    x = torch.tensor([[1.0, 0.5, -1.0], [0.2, 0.1, 0.0]], dtype=F64)
    target = torch.tensor([0, 2])
    fns: list[tuple[str, Callable[[Tensor], object], str]] = [
        ("sparsemax", lambda t: m.sparsemax(t), "x"),
        ("sparsemax-dim0", lambda t: m.sparsemax(t, dim=0), "x"),
        ("entmax15", lambda t: m.entmax15(t), "x"),
        ("Sparsemax", lambda t: m.Sparsemax()(t), "x"),
        ("Entmax15", lambda t: m.Entmax15()(t), "x"),
        ("sparsemax_threshold", lambda t: m.sparsemax_threshold(t), "x"),
        ("sparsemax_loss", lambda t: m.sparsemax_loss(t, target), "scores"),
        ("SparsemaxLoss", lambda t: m.SparsemaxLoss()(t, target), "scores"),
        ("sparsemap", lambda t: m.sparsemap(t, o.FreeBits(3)), "theta"),
        ("topk_sparsemax", lambda t: m.topk_sparsemax(t, 2), "theta"),
        ("kbest_free_bits", lambda t: m.kbest_free_bits(t, 2), "theta"),
        ("kbest_budget_bits", lambda t: m.kbest_budget_bits(t, 2, 1), "theta"),
    ]  # fmt: skip
    cases: list[BadInput] = []
    for entry, fn, arg in fns:
        empty = x[:0] if entry.endswith("dim0") else x[:, :0]  # empty along the mapped dim
        inputs: list[tuple[str, Tensor | list[Any]]] = [
            ("nan", _with(x, (1, 2), _NAN)),
            ("inf-pos", _with(x, (0, 1), _INF)),
            ("dtype-long", x.long()),
            ("type-list", x.tolist()),
            ("shape-scalar", x[0, 0]),
            ("empty-last", empty),
        ]
        cases += [
            BadInput(f"{entry}/{kind}", entry.split("-")[0], kind.split("-")[0],
                     functools.partial(fn, value), arg)  # type: ignore[arg-type]
            for kind, value in inputs
        ]  # fmt: skip
    cases += [
        BadInput(f"sparsemax/{kind}", "sparsemax", kind.split("-")[0], call, arg)
        for kind, call, arg in [
            ("range-dim", lambda: m.sparsemax(x, dim=2), "dim"),
            ("type-dim", lambda: m.sparsemax(x, dim=0.0), "dim"),  # type: ignore[arg-type]
            ("k-zero", lambda: m.sparsemax(x, k=0), "k"),
            ("inf-row", lambda: m.sparsemax(_with(x, (0, ...), -_INF)), "x"),
        ]
    ]
    cases += [
        BadInput(f"entmax15/{kind}", "entmax15", kind.split("-")[0], call, arg)
        for kind, call, arg in [
            ("range-dim", lambda: m.entmax15(x, dim=-3), "dim"),
            ("inf-row", lambda: m.entmax15(_with(x, (1, ...), -_INF)), "x"),
        ]
    ]
    rows: list[tuple[str, str, Callable[[], object], str]] = [
        ("sparsemax_loss", "dtype-target", lambda: m.sparsemax_loss(x, target.double()),
         "target"),
        ("sparsemax_loss", "shape-target", lambda: m.sparsemax_loss(x, target[:1]), "target"),
        ("sparsemax_loss", "range-target", lambda: m.sparsemax_loss(x, target + 5), "target"),
        ("SparsemaxLoss", "range-reduction", lambda: m.SparsemaxLoss("max"), "reduction"),  # type: ignore[arg-type]
        ("sparsemap", "type-oracle", lambda: m.sparsemap(x, "oracle"), "oracle"),  # type: ignore[arg-type]
        ("sparsemap", "shape-oracle", lambda: m.sparsemap(x, o.FreeBits(4)), "oracle"),
        ("sparsemap", "range-max-iter", lambda: m.sparsemap(x, o.FreeBits(3), max_iter=0),
         "max_iter"),
        ("sparsemap", "range-tol", lambda: m.sparsemap(x, o.FreeBits(3), tol=-1.0), "tol"),
        ("sparsemap", "range-method", lambda: m.sparsemap(x, o.FreeBits(3), method="exact"),
         "method"),
        ("topk_sparsemax", "k-zero", lambda: m.topk_sparsemax(x, 0), "k"),
        ("topk_sparsemax", "k-above-total", lambda: m.topk_sparsemax(x, 9), "k"),
        ("topk_sparsemax", "range-structures", lambda: m.topk_sparsemax(x, 2, structures="all"),  # type: ignore[arg-type]
         "structures"),
        ("topk_sparsemax", "range-budget", lambda: m.topk_sparsemax(x, 2, structures="budget",
                                                                    budget=-1), "budget"),
        ("kbest_budget_bits", "range-budget", lambda: m.kbest_budget_bits(x, 2, -1), "budget"),
        ("FreeBits", "range-d", lambda: o.FreeBits(0), "d"),
        ("BudgetBits", "range-budget", lambda: o.BudgetBits(3, 4), "budget"),
        ("KSubsetOracle", "k-above-n", lambda: o.KSubsetOracle(3, 4), "k"),
        ("PermutationOracle", "range-n", lambda: o.PermutationOracle(0), "n"),
        ("SpanningTreeOracle", "range-n", lambda: o.SpanningTreeOracle(1), "n"),
        ("ArborescenceOracle", "range-root", lambda: o.ArborescenceOracle(3, root=3), "root"),
        ("SequenceOracle", "range-length", lambda: o.SequenceOracle(0, 2), "length"),
        ("KSubsetOracle", "shape-w", lambda: o.KSubsetOracle(4, 2)(x), "w"),
        ("KSubsetOracle", "dtype-w", lambda: o.KSubsetOracle(3, 2)(x.long()), "w"),
    ]  # fmt: skip
    cases += [BadInput(f"{entry}/{kind}", entry, kind.split("-")[0], call, arg)
              for entry, kind, call, arg in rows]  # fmt: skip
    return cases


# -- device mixes -------------------------------------------------------------------------------


def _device_cases() -> list[BadInput]:
    """A distribution on ``meta`` with a ``cpu`` value, and the other way round."""
    cases = []
    for f in _families():
        if f.entry.startswith("Relaxed") or f.entry == "SparseMAP":
            continue

        def call(f: _Family = f) -> object:
            sample = f.make(f.params).sample()
            return f.make(f.params.to("meta")).log_prob(sample)

        cases.append(BadInput(f"{f.entry}.log_prob/device-cpu-value", f"{f.entry}.log_prob",
                              "device", call, "value"))  # fmt: skip
    return cases


def bad_inputs() -> list[BadInput]:
    """Every bad-input case: families (from the registry), their ``log_prob`` values and
    settings, estimators (from the registry) and their settings, mappings and oracles."""
    cases: list[BadInput] = []
    for f in _families():
        cases += _family_cases(f)
    cases += _setting_cases()
    cases += _support_cases()
    cases += _device_cases()
    for example in ESTIMATOR_EXAMPLES:
        cases += _estimator_cases(example)
    cases += _estimator_setting_cases()
    cases += _mapping_cases()
    names = [c.name for c in cases]
    if len(set(names)) != len(names):  # pragma: no cover
        dup = sorted({n for n in names if names.count(n) > 1})
        raise AssertionError(f"duplicate bad-input names: {dup}")
    return cases


__all__ = ["BadInput", "bad_inputs", "check_bad_input"]
