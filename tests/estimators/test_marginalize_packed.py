"""Marginalize with a PackedLoss: the same sum and gradients as the padded path, with the loss
evaluated on exactly the values of nonzero probability."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import latentgrad as lg
from latentgrad.estimators import PackedLoss, pack_support
from latentgrad.mappings.oracles import BudgetBits, FreeBits

D = 6

FAMILIES: dict[str, Callable[[Tensor], lg.distributions.DiscreteDistribution]] = {
    "sparsemap-free": lambda s: lg.SparseMAP(s, FreeBits(D)),
    "sparsemap-budget": lambda s: lg.SparseMAP(s, BudgetBits(D, 3)),
    "sparsemap-budget-active-set": lambda s: lg.SparseMAP(s, BudgetBits(D, 3), method="active_set"),
    "topk-free": lambda s: lg.TopKSparsemax(s, k=10),
    "topk-budget": lambda s: lg.TopKSparsemax(s, k=10, structures="budget", budget=3),
}


def _scores(batch: tuple[int, ...], dtype: torch.dtype = torch.float64) -> Tensor:
    """Scores whose rows have supports of very different sizes (1 to many structures)."""
    g = torch.Generator().manual_seed(0)
    s = 0.5 + 0.4 * torch.randn(*batch, D, generator=g, dtype=torch.float64)
    scale = torch.linspace(0.3, 12.0, int(torch.tensor(batch).prod()), dtype=torch.float64)
    s = (s - 0.5) * scale.reshape(*batch, 1) + 0.5  # wide rows: few structures
    return s.to(dtype).requires_grad_()


class Decoder(torch.nn.Module):
    """A small nonlinear loss of the bits and a per-element target."""

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w = torch.nn.Parameter(torch.randn(D, 5, generator=g, dtype=torch.float64).to(dtype))
        self.b = torch.nn.Parameter(torch.randn(5, generator=g, dtype=torch.float64).to(dtype))

    def rows(self, z: Tensor, x: Tensor) -> Tensor:
        """``(N, D)`` bits and ``(N, 5)`` targets to ``(N,)`` losses."""
        return (torch.tanh(z @ self.w + self.b) - x).square().sum(-1) + z[..., 0] * x[..., 1]

    def padded(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        """The ordinary loss_fn: ``x`` broadcasts over the leading sample dims."""
        return lambda z: self.rows(z, x.expand(*z.shape[:-1], 5))


def _grads(out: lg.Estimate, *inputs: Tensor) -> tuple[Tensor, ...]:
    return torch.autograd.grad(out.surrogate.sum(), inputs)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch", [(7,), (2, 3)])
def test_packed_equals_padded_to_1e10_with_gradients(family: str, batch: tuple[int, ...]) -> None:
    scores = _scores(batch)
    dec = Decoder()
    x = torch.randn(*batch, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x.requires_grad_()
    padded = lg.Marginalize()(FAMILIES[family](scores), dec.padded(x))
    loss = PackedLoss.from_rows(dec.rows, x, batch_dims=len(batch))
    packed = lg.Marginalize()(FAMILIES[family](scores), loss)
    torch.testing.assert_close(packed.value, padded.value, rtol=0, atol=1e-10)
    torch.testing.assert_close(packed.surrogate, padded.surrogate, rtol=0, atol=1e-10)
    inputs = (scores, dec.w, dec.b, x)
    for g_packed, g_padded in zip(_grads(packed, *inputs), _grads(padded, *inputs), strict=True):
        assert g_padded.abs().max() > 0
        torch.testing.assert_close(g_packed, g_padded, rtol=0, atol=1e-10)
    # The losses come back in the padded layout: equal where the weight is positive, 0 elsewhere.
    keep = padded.extras["probs"] > 0
    torch.testing.assert_close(packed.losses[keep], padded.losses[keep], rtol=0, atol=1e-10)
    assert (packed.losses[~keep] == 0).all()
    assert torch.equal(packed.extras["support_size"], padded.extras["support_size"])


@pytest.mark.parametrize("family", FAMILIES)
def test_the_loss_sees_exactly_the_nonzero_weight_structures(family: str) -> None:
    scores = _scores((9,))
    dec = Decoder()
    x = torch.randn(9, 5, dtype=torch.float64)
    calls: list[tuple[Tensor, Tensor]] = []

    def recorded(z: Tensor, index: Tensor) -> Tensor:
        calls.append((z.detach().clone(), index.clone()))
        return dec.rows(z, x[index])

    q = FAMILIES[family](scores)
    out = lg.Marginalize()(q, PackedLoss(recorded, (9,)))
    assert len(calls) == 1
    z, index = calls[0]
    values, probs = q.support_probs()
    positive = probs > 0
    expected = sorted((b, tuple(values[a, b].tolist())) for a, b in positive.nonzero().tolist())
    got = sorted((int(i), tuple(row.tolist())) for i, row in zip(index, z, strict=True))
    assert got == expected
    assert z.shape[0] == int(positive.sum())
    # Rows are batch-major, and the padded layout evaluated strictly more here.
    assert torch.equal(index, index.sort().values)
    assert z.shape[0] < probs.numel()
    assert out.loss_evals == -(-z.shape[0] // 9)


def test_pack_support_orders_rows_and_keeps_gradients() -> None:
    scores = _scores((4,))
    q = lg.SparseMAP(scores, FreeBits(D))
    values, probs = q.support_probs()
    packed = pack_support(values, probs, q.batch_shape)
    assert torch.equal(packed.values, values[packed.slot, packed.element])
    assert torch.equal(packed.probs, probs[packed.slot, packed.element])
    assert (packed.probs > 0).all()
    sums = torch.zeros(4, dtype=torch.float64).index_add(0, packed.element, packed.probs)
    torch.testing.assert_close(sums, torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-12)
    (g,) = torch.autograd.grad(
        (packed.probs * packed.values[:, 0]).sum(), scores, retain_graph=True
    )
    (h,) = torch.autograd.grad((probs * values[..., 0]).sum(), scores)
    torch.testing.assert_close(g, h, rtol=0, atol=1e-12)


def test_categorical_exact_sum_and_zero_probability_skipped() -> None:
    logits = torch.tensor([[0.0, -torch.inf, 1.0], [2.0, 0.5, -1.0]], dtype=torch.float64)
    logits.requires_grad_()
    target = torch.tensor([0.5, -2.0], dtype=torch.float64)

    def rows(z: Tensor, t: Tensor) -> Tensor:
        # infinite where q(z) = 0 (category 1 of the first row, whose target is positive):
        # it must never be evaluated in the sum nor reach the gradient
        weight = torch.where((z[..., 1] > 0) & (t > 0), torch.inf, 1.0)
        return weight * (z * torch.arange(3.0, dtype=z.dtype)).sum(-1) * t

    out = lg.Marginalize()(lg.Categorical(logits=logits), PackedLoss.from_rows(rows, target))
    p = torch.softmax(logits.detach(), -1)
    exact = torch.stack([p[0, 2] * 2 * 0.5, (p[1, 1] + 2 * p[1, 2]) * -2.0])
    torch.testing.assert_close(out.value, exact, rtol=0, atol=1e-12)
    out.surrogate.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert out.loss_evals == 3  # ceil(5 rows / 2 elements)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_ordinary_contract_matches_the_per_row_loss(family: str) -> None:
    """Every other estimator calls a PackedLoss as loss_fn(z): sample dims are flattened."""
    dec = Decoder()
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    loss = PackedLoss.from_rows(dec.rows, x, batch_dims=2)
    z = torch.randint(0, 2, (4, 2, 3, D)).double()
    torch.testing.assert_close(loss(z), dec.padded(x)(z), rtol=0, atol=1e-12)
    q = FAMILIES[family](_scores((2, 3)))
    torch.manual_seed(0)
    a = lg.ScoreFunction(num_samples=3)(q, loss)
    torch.manual_seed(0)
    b = lg.ScoreFunction(num_samples=3)(FAMILIES[family](_scores((2, 3))), dec.padded(x))
    torch.testing.assert_close(a.value, b.value, rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_extreme_scores_give_one_structure_and_finite_gradients(family: str) -> None:
    scores = torch.tensor([[1e4, -1e4, 1e4, -1e4, 1e4, -1e4]] * 2, dtype=torch.float64)
    scores.requires_grad_()
    dec = Decoder()
    x = torch.randn(2, 5, dtype=torch.float64)
    calls: list[int] = []

    def rows(z: Tensor, xs: Tensor) -> Tensor:
        calls.append(z.shape[0])
        return dec.rows(z, xs)

    out = lg.Marginalize()(FAMILIES[family](scores), PackedLoss.from_rows(rows, x))
    assert calls == [2]
    out.surrogate.sum().backward()
    assert torch.isfinite(out.value).all() and torch.isfinite(scores.grad).all()
    assert torch.isfinite(dec.w.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("family", FAMILIES)
def test_half_precision_is_finite_and_matches_padded(family: str, dtype: torch.dtype) -> None:
    scores = _scores((5,), dtype)
    dec = Decoder(dtype)
    x = torch.randn(5, 5, dtype=torch.float64).to(dtype)
    packed = lg.Marginalize()(FAMILIES[family](scores), PackedLoss.from_rows(dec.rows, x))
    padded = lg.Marginalize()(FAMILIES[family](scores), dec.padded(x))
    assert packed.value.dtype == dtype
    torch.testing.assert_close(packed.value, padded.value, rtol=2e-2, atol=2e-2)
    packed.surrogate.sum().backward()
    assert torch.isfinite(scores.grad).all() and torch.isfinite(dec.w.grad).all()


def test_an_empty_batch_uses_the_padded_path() -> None:
    q = lg.SparseMAP(torch.zeros(0, D), FreeBits(D))
    loss = PackedLoss.from_rows(lambda z, xs: z.sum(-1) + xs, torch.zeros(0))
    out = lg.Marginalize()(q, loss)
    assert out.value.shape == (0,)


def test_argument_checks_name_the_argument() -> None:
    with pytest.raises(TypeError, match="fn must be callable"):
        PackedLoss(3.0, (2,))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="batch_shape must be a tuple"):
        PackedLoss(lambda z, i: z.sum(-1), 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="event_dim must be >= 0"):
        PackedLoss(lambda z, i: z.sum(-1), (2,), event_dim=-1)
    with pytest.raises(ValueError, match="context must hold"):
        PackedLoss.from_rows(lambda z: z.sum(-1))
    with pytest.raises(ValueError, match=r"context\[1\] has batch shape \(3,\)"):
        PackedLoss.from_rows(lambda z, a, b: z.sum(-1), torch.zeros(2), torch.zeros(3))
    with pytest.raises(TypeError, match=r"context\[0\] must be a torch.Tensor"):
        PackedLoss.from_rows(lambda z, a: z.sum(-1), [1.0, 2.0])  # type: ignore[arg-type]
    loss = PackedLoss.from_rows(lambda z, xs: (z * xs).sum(-1), torch.ones(3, D))
    with pytest.raises(ValueError, match="batch_shape"):
        loss(torch.ones(2, 4, D))
    q2 = lg.SparseMAP(torch.zeros(2, D), FreeBits(D))
    with pytest.raises(ValueError, match=r"loss_fn is a PackedLoss over batch_shape \(3,\)"):
        lg.Marginalize()(q2, loss)
    with pytest.raises(ValueError, match="loss_fn is a PackedLoss with event_dim=2"):
        lg.Marginalize()(q2, PackedLoss(lambda z, i: z.sum((-1, -2)), (2,), event_dim=2))
    wrong = PackedLoss(lambda z, i: z.sum(), (2,))
    with pytest.raises(ValueError, match="one loss per row"):
        lg.Marginalize()(q2, wrong)
    integer = PackedLoss(lambda z, i: i, (2,))
    with pytest.raises(TypeError, match="floating-point"):
        lg.Marginalize()(q2, integer)
