"""The shared image-model parts of ``latentgrad.lab.images``: the chunked log-partition of a
linear output layer, per row and summed over groups of rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentgrad.lab.images import (
    SummedLinearLogSumExp,
    linear_logsumexp,
    summed_linear_logsumexp,
)


def dense(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return (h @ weight.T + bias).logsumexp(-1)


@pytest.mark.parametrize("summed", [False, True], ids=["per-row", "summed"])
@pytest.mark.parametrize("chunk", [1, 3, 7, 13, 100])  # (summed: a group per block, or several)
def test_matches_the_dense_log_partition_in_value_and_gradient(chunk: int, summed: bool) -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 3, 6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, generator=g, dtype=torch.float64, requires_grad=True)
    fn, ref_fn = (summed_linear_logsumexp, summed_dense) if summed else (linear_logsumexp, dense)
    out = fn(h, w, b, chunk=chunk)
    assert fused(out) == summed
    up = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((out * up).sum(), (h, w, b))
    ref = ref_fn(h, w, b)
    ref_grads = torch.autograd.grad((ref * up).sum(), (h, w, b))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(1)
    h = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: linear_logsumexp(*a, chunk=3), (h, w, b))


def test_only_the_needed_gradients_and_no_bias() -> None:
    h = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, dtype=torch.float64)
    (gh,) = torch.autograd.grad(linear_logsumexp(h, w, chunk=2).sum(), (h,))
    torch.testing.assert_close(gh, torch.softmax(h @ w.T, -1) @ w, rtol=0, atol=1e-12)


def test_extreme_logits_stay_finite() -> None:
    layer = nn.Linear(2, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1e4, 0.0], [-1e4, 0.0], [0.0, 1e4], [0.0, 0.0]]))
        layer.bias.copy_(torch.tensor([0.0, -float("inf"), 0.0, 0.0]))  # one level impossible
    h = torch.tensor([[1.0, 0.5], [-1.0, -1.0], [0.0, 0.0]], requires_grad=True)
    out = linear_logsumexp(h, layer.weight, layer.bias, chunk=2)
    out.sum().backward()
    torch.testing.assert_close(out, dense(h, layer.weight, layer.bias))
    assert torch.isfinite(out).all() and torch.isfinite(h.grad).all()  # type: ignore[arg-type]
    assert torch.isfinite(layer.weight.grad).all() and torch.isfinite(layer.bias.grad).all()  # type: ignore[arg-type]


def test_no_graph_under_no_grad() -> None:
    h = torch.randn(3, 2, requires_grad=True)
    w = torch.randn(4, 2, requires_grad=True)
    with torch.no_grad():
        out = linear_logsumexp(h, w)
    assert out.grad_fn is None and not out.requires_grad


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chunk": 0}, "chunk"),
        ({"chunk": 2.0}, "chunk must be an int"),
        ({"weight": torch.zeros(4, 3)}, "weight"),
        ({"weight": torch.zeros(4)}, "weight"),
        ({"bias": torch.zeros(3)}, "bias"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"h": torch.zeros(2, 2), "weight": torch.zeros(4, 2)}
    args.update(kwargs)
    with pytest.raises((TypeError, ValueError), match=match):
        linear_logsumexp(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_finite_and_close(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(2)
    h = torch.randn(10, 3, generator=g).to(dtype).requires_grad_()
    w = torch.randn(7, 3, generator=g).to(dtype).requires_grad_()
    b = torch.randn(7, generator=g).to(dtype).requires_grad_()
    out = linear_logsumexp(h, w, b, chunk=4)
    out.sum().backward()
    ref = dense(h.detach().float(), w.detach().float(), b.detach().float())
    tol = 8 * torch.finfo(dtype).eps * (1 + ref.abs().max())
    assert out.dtype == dtype and float((out.detach().float() - ref).abs().max()) < tol
    for t in (h, w, b):
        assert t.grad is not None and bool(torch.isfinite(t.grad).all())


# --- summed over groups: the forward keeps the gradient (SummedLinearLogSumExp) -------------


def summed_dense(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return dense(h, weight, bias).sum(-1)


def fused(out: torch.Tensor) -> bool:
    """Whether ``out``'s graph holds :class:`SummedLinearLogSumExp`."""
    nodes, seen = [out.grad_fn], []
    while nodes:
        node = nodes.pop()
        if node is not None:
            seen.append(type(node).__name__)
            nodes += [n for n, _ in node.next_functions]
    return any(name.startswith(SummedLinearLogSumExp.__name__) for name in seen)


def test_summed_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(4)
    h = torch.randn(3, 5, 2, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: summed_linear_logsumexp(*a, chunk=7), (h, w, b))


def test_summed_only_the_needed_gradients_no_bias_and_the_fallbacks() -> None:
    g = torch.Generator().manual_seed(5)
    h = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, generator=g, dtype=torch.float64)
    (gh,) = torch.autograd.grad(summed_linear_logsumexp(h, w, chunk=2).sum(), (h,))
    torch.testing.assert_close(gh, torch.softmax(h @ w.T, -1) @ w, rtol=0, atol=1e-12)
    # Without a gradient to take, or with as many features as rows per group, the per-row
    # function summed: the same values, no gradient kept.
    with torch.no_grad():
        out = summed_linear_logsumexp(h, w)
    assert out.grad_fn is None and not out.requires_grad
    torch.testing.assert_close(out, summed_dense(h, w, torch.zeros(5, dtype=h.dtype)))
    wide = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    out = summed_linear_logsumexp(wide, w)
    assert not fused(out)
    torch.testing.assert_close(out, summed_dense(wide, w, torch.zeros(5, dtype=h.dtype)))


def test_summed_extreme_logits_stay_finite() -> None:
    layer = nn.Linear(2, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1e4, 0.0], [-1e4, 0.0], [0.0, 1e4], [0.0, 0.0]]))
        layer.bias.copy_(torch.tensor([0.0, -float("inf"), 0.0, 0.0]))  # one level impossible
    h = torch.tensor([[[1.0, 0.5], [-1.0, -1.0], [0.0, 0.0]]], requires_grad=True)
    out = summed_linear_logsumexp(h, layer.weight, layer.bias, chunk=2)
    out.sum().backward()
    torch.testing.assert_close(out, summed_dense(h, layer.weight, layer.bias))
    assert torch.isfinite(out).all() and torch.isfinite(h.grad).all()  # type: ignore[arg-type]
    assert torch.isfinite(layer.weight.grad).all() and torch.isfinite(layer.bias.grad).all()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chunk": 0}, "chunk"),
        ({"h": torch.zeros(3, requires_grad=True)}, "h must have shape"),
        ({"weight": torch.zeros(4, 3)}, "weight"),
        ({"bias": torch.zeros(3)}, "bias"),
    ],
)
def test_summed_bad_arguments_are_named(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "h": torch.zeros(1, 3, 2, requires_grad=True),
        "weight": torch.zeros(4, 2),
    }
    args.update(kwargs)
    with pytest.raises((TypeError, ValueError), match=match):
        summed_linear_logsumexp(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_summed_half_precision_is_finite_and_close(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(6)
    h = torch.randn(2, 8, 3, generator=g).to(dtype).requires_grad_()
    w = torch.randn(7, 3, generator=g).to(dtype).requires_grad_()
    b = torch.randn(7, generator=g).to(dtype).requires_grad_()
    out = summed_linear_logsumexp(h, w, b, chunk=4)
    out.sum().backward()
    ref = summed_dense(h.detach().float(), w.detach().float(), b.detach().float())
    tol = 8 * 8 * torch.finfo(dtype).eps * (1 + ref.abs().max())  # 8 rows summed
    assert out.dtype == dtype and float((out.detach().float() - ref).abs().max()) < tol
    for t in (h, w, b):
        assert t.grad is not None and bool(torch.isfinite(t.grad).all())
