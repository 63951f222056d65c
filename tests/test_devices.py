"""Device audit, on the CPU: the library puts what it creates where its inputs are.

Two checks that need no GPU, so that the CUDA run of the suite (``--device cuda``,
``benchmarks/gpu_check.py``) does not find these bugs first:

- every tensor the library creates names its device (``device=x.device``, or ``device="cpu"``
  for a table it keeps on the CPU on purpose): a factory call with no device follows torch's
  default device, not the input's, and puts a CPU tensor beside CUDA inputs;
- families and estimators given ``meta`` inputs (shape only, no data) return ``meta`` outputs.
  Operations that need the data (a host sync, ``nonzero``) cannot run on ``meta``; they are
  left out, and each test checks that something did run.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

import latentgrad as lg
from latentgrad.mappings import oracles as o
from latentgrad.testing.examples import (
    ESTIMATOR_EXAMPLES,
    FAMILY_EXAMPLES,
    EstimatorExample,
    FamilyExample,
    compatible,
)

F64 = torch.float64


class ImplicitDevices(TorchFunctionMode):
    """Records the factory calls (``torch.zeros``, ``torch.tensor``, ...) made by the library
    itself (not its test oracles) without a ``device=``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _device_constructors() and kwargs.get("device") is None:
            frame = sys._getframe(1)
            module = frame.f_globals.get("__name__", "")
            if module.startswith("latentgrad.") and not module.startswith("latentgrad.testing"):
                self.calls[f"{module}:{frame.f_lineno} torch.{func.__name__}"] += 1
        return func(*args, **kwargs)


def _loss(event_dims: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        return z.to(F64).flatten(z.dim() - event_dims).square().sum(-1) if event_dims else z

    return loss_fn


#: What a family is asked, by the capability it needs (``None``: every family).
FAMILY_OPS: dict[str, tuple[str | None, Callable[[Any], Any]]] = {
    "sample": (None, lambda q: q.sample((3,))),
    "log_prob": (None, lambda q: q.log_prob(q.sample((2,)))),
    "entropy": (None, lambda q: q.entropy()),
    "support_probs": ("has_enumerate_support", lambda q: q.support_probs()),
    "sample_noise": ("has_noise", lambda q: q.sample_noise((2,))),
    "sample_with_noise": ("has_noise", lambda q: q.sample_with_noise((2,))),
    "relaxed": ("has_relaxation", lambda q: q.rsample_relaxed(0.5, (2,))),
    "sample_with_trace": ("has_trace", lambda q: q.sample_with_trace((2,))),
}


def _family_ops(q: Any) -> dict[str, Callable[[Any], Any]]:
    return {
        name: op
        for name, (needs, op) in FAMILY_OPS.items()
        if needs is None or bool(getattr(q, needs, False))
    }


def _pairs() -> list[tuple[FamilyExample, EstimatorExample]]:
    """Each estimator with the first family it applies to."""
    pairs = []
    for est in ESTIMATOR_EXAMPLES:
        family = next((f for f in FAMILY_EXAMPLES if compatible(est, f.dist())), None)
        if family is not None:
            pairs.append((family, est))
    return pairs


PAIRS = _pairs()
ORACLES = [
    o.FreeBits(4),
    o.BudgetBits(4, 2),
    o.KSubsetOracle(4, 2),
    o.PermutationOracle(3),
    o.SpanningTreeOracle(4),
    o.ArborescenceOracle(4, root=1),
    o.SequenceOracle(3, 2),
]


def _tensors(out: Any) -> list[torch.Tensor]:
    """The tensors in an output (a tensor, a tuple of them, an Estimate)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, tuple | list):
        return [t for item in out for t in _tensors(item)]
    if hasattr(out, "surrogate"):
        return [t for t in (out.value, out.surrogate, out.per_sample) if t is not None]
    return []


# -- every tensor the library creates names its device --------------------------------------------


def test_the_families_create_no_tensor_on_an_implicit_device() -> None:
    with ImplicitDevices() as audit:
        for example in FAMILY_EXAMPLES:
            q = example.dist(requires_grad=True)
            for op in _family_ops(q).values():
                op(q)
    assert not audit.calls, f"factory calls with no device= (name the device): {audit.calls}"


@pytest.mark.parametrize(("family", "estimator"), PAIRS, ids=[f"{e.name}" for _, e in PAIRS])
def test_the_estimators_create_no_tensor_on_an_implicit_device(
    family: FamilyExample, estimator: EstimatorExample
) -> None:
    q = family.dist(requires_grad=True)
    made = estimator.make(q)  # a module's buffers follow .to(), as in torch.nn: not audited
    with ImplicitDevices() as audit:
        made(q, _loss(len(q.event_shape))).surrogate.sum().backward()
    assert not audit.calls, f"factory calls with no device= (name the device): {audit.calls}"


def test_the_mappings_and_oracles_create_no_tensor_on_an_implicit_device() -> None:
    x = torch.randn(3, 6, dtype=F64, requires_grad=True)
    with ImplicitDevices() as audit:
        for mapping in (lg.mappings.sparsemax, lg.mappings.entmax15):
            mapping(x).sum().backward()
        lg.mappings.sparsemax_loss(x, torch.tensor([0, 2, 5])).sum().backward()
        for oracle in ORACLES:
            w = torch.randn(2, oracle.dim, dtype=F64)
            oracle(w)
            oracle.enumerate(device=w.device)
            lg.mappings.sparsemap(w, oracle)
    assert not audit.calls, f"factory calls with no device= (name the device): {audit.calls}"


# -- meta inputs give meta outputs --------------------------------------------------------------

_NEEDS_DATA = ("meta tensor", "on meta tensors", "meta_nonzero", "Meta kernel", "fake impl")


def _on_meta(fn: Callable[[], Any]) -> list[torch.Tensor] | None:
    """The tensors ``fn()`` returns, or None when it needs the data (not a device bug)."""
    try:
        out = fn()
    except (RuntimeError, NotImplementedError) as err:
        message = str(err)
        if "device" not in message and any(s in message for s in _NEEDS_DATA):
            return None
        raise
    return _tensors(out)


@pytest.mark.parametrize("example", FAMILY_EXAMPLES, ids=[f.name for f in FAMILY_EXAMPLES])
def test_a_family_on_meta_answers_on_meta(example: FamilyExample) -> None:
    q = example.dist(device="meta")
    ran = []
    for name, op in _family_ops(q).items():
        tensors = _on_meta(lambda op=op: op(q))
        if tensors is not None:
            ran.append(name)
            assert tensors, name
            assert all(t.device.type == "meta" for t in tensors), (name, tensors)
    assert ran, "no operation could run on meta"


@pytest.mark.parametrize(("family", "estimator"), PAIRS, ids=[f"{e.name}" for _, e in PAIRS])
def test_an_estimator_on_meta_answers_on_meta(
    family: FamilyExample, estimator: EstimatorExample
) -> None:
    q = family.dist(device="meta", requires_grad=True)
    made = estimator.make(q)
    module = getattr(made, "estimator", made)  # unwrap WithContext
    if isinstance(module, torch.nn.Module) and any(True for _ in module.parameters()):
        pytest.skip(
            f"{estimator.name} holds a network: it goes to a device by .to(), as in torch.nn"
        )
    tensors = _on_meta(lambda: made(q, _loss(len(q.event_shape))))
    if tensors is None:
        pytest.skip(f"{estimator.name} on {family.name} needs the data (cannot run on meta)")
    assert tensors and all(t.device.type == "meta" for t in tensors), tensors


def test_the_mappings_on_meta_answer_on_meta() -> None:
    x = torch.zeros(3, 6, device="meta")
    ran = []
    for name, fn in {
        "sparsemax": lambda: lg.mappings.sparsemax(x),
        "entmax15": lambda: lg.mappings.entmax15(x),
        **{
            repr(oracle): (lambda oracle=oracle: oracle(x[:, :0].new_zeros(2, oracle.dim)))
            for oracle in ORACLES
        },
    }.items():
        tensors = _on_meta(fn)
        if tensors is not None:
            ran.append(name)
            assert all(t.device.type == "meta" for t in tensors), (name, tensors)
    assert ran, "no mapping could run on meta"
