"""Marginalize: exact expectation and gradient, zero-probability values skipped, argument checks."""

import pytest
import torch

import latentgrad as lg


def _loss(theta):
    def loss_fn(z):
        return torch.tanh(z @ theta).pow(2).sum(-1) + (z * torch.arange(z.shape[-1])).sum(-1)

    return loss_fn


def test_matches_manual_sum_and_its_gradient_to_1e6():
    torch.manual_seed(0)
    logits = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    theta = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    out = lg.Marginalize()(lg.Categorical(logits=logits), _loss(theta))
    eye = torch.eye(4, dtype=torch.float64)
    manual = (torch.softmax(logits, -1) * _loss(theta)(eye)).sum(-1)
    torch.testing.assert_close(out.value, manual.detach(), rtol=0, atol=1e-6)
    g = torch.autograd.grad(out.surrogate.sum(), [logits, theta])
    h = torch.autograd.grad(manual.sum(), [logits, theta])
    for a, b in zip(g, h, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert out.loss_evals == 4
    assert out.extras["support_size"].tolist() == [4] * 5
    assert out.per_sample.shape == (1, 5)


def test_bernoulli_and_independent_supports():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    q = lg.Bernoulli(logits=logits)
    out = lg.Marginalize()(q, lambda z: z.prod(-1))
    torch.testing.assert_close(out.value, torch.sigmoid(logits).prod(-1).detach())
    qi = lg.Categorical(logits=torch.randn(2, 2, 3, dtype=torch.float64)).to_event(1)
    out = lg.Marginalize()(qi, lambda z: z[..., 0, 0] * z[..., 1, 2])
    p = qi.base_dist.probs
    torch.testing.assert_close(out.value, p[:, 0, 0] * p[:, 1, 2])
    assert out.loss_evals == 9


def test_zero_probability_values_are_skipped():
    logits = torch.tensor([[0.0, -torch.inf, 0.0]], requires_grad=True)

    def loss_fn(z):
        # infinite loss where q(z) = 0 must not leak into the value or the gradient
        return torch.where(z[..., 1] > 0, torch.inf, z[..., 0])

    out = lg.Marginalize()(lg.Categorical(logits=logits), loss_fn)
    assert out.value.item() == pytest.approx(0.5)
    out.surrogate.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert out.extras["support_size"].tolist() == [2]


def test_argument_checks():
    q = lg.Categorical(logits=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="max_support"):
        lg.Marginalize(max_support=2)(q, lambda z: z.sum(-1))
    with pytest.raises(ValueError, match="max_support must be >= 1"):
        lg.Marginalize(max_support=0)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        lg.Marginalize()(q, 3.0)
    with pytest.raises(TypeError, match="dist must be a latentgrad distribution"):
        lg.Marginalize()(torch.distributions.Categorical(logits=torch.zeros(4)), lambda z: z)
    with pytest.raises(ValueError, match=r"loss_fn must return shape .*\(4, 3\)"):
        lg.Marginalize()(q, lambda z: z.sum())
    with pytest.raises(TypeError, match=r"loss_fn must return a torch\.Tensor"):
        lg.Marginalize()(q, lambda z: 1.0)


def test_shape_error_suggests_to_event():
    q = lg.Categorical(logits=torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"to_event\(1\)"):
        lg.Marginalize()(q, lambda z: z.sum((-1, -2)))
