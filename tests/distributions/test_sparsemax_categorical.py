"""SparsemaxCategorical: sparse support, exact marginalization, sampling, relaxation, checks."""

import itertools
import math

import pytest
import torch

from latentgrad.distributions.sparsemax import SparsemaxCategorical
from latentgrad.estimators.marginalize import Marginalize
from latentgrad.mappings import sparsemax

ALPHA = 1e-5


def _scores(shape=(2, 3, 8), seed=0, scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype) * scale


def test_shapes_probs_and_moments():
    scores = _scores()
    q = SparsemaxCategorical(scores)
    assert q.batch_shape == (2, 3) and q.event_shape == (8,)
    torch.testing.assert_close(q.probs, sparsemax(scores))
    torch.testing.assert_close(q.mean, q.probs)
    torch.testing.assert_close(q.variance, q.probs * (1 - q.probs))
    assert q.enumerate_support().shape == (8, 2, 3, 8)
    assert q.enumerate_support(expand=False).shape == (8, 1, 1, 8)
    assert q.unit_shape == ()
    wide = q.expand((4, 2, 3))
    assert wide.batch_shape == (4, 2, 3)
    torch.testing.assert_close(wide.probs[1], q.probs)
    k_wide = SparsemaxCategorical(scores, k=2).expand((5, 2, 3))
    assert k_wide.k == 2
    torch.testing.assert_close(k_wide.probs[0], q.probs)


def test_support_probs_returns_only_nonzero_values():
    q = SparsemaxCategorical(_scores(seed=1))
    values, probs = q.support_probs()
    counts = (q.probs > 0).sum(-1)
    size = int(counts.max())
    assert q.support_size() == size < 8
    assert values.shape == (size, 2, 3, 8) and probs.shape == (size, 2, 3)
    assert set(values.unique().tolist()) == {0.0, 1.0}
    assert (values.sum(-1) == 1).all()
    torch.testing.assert_close(probs.sum(0), torch.ones(2, 3, dtype=torch.float64))
    # every category of nonzero probability appears exactly once; padding has probability 0
    covered = values.sum(0)
    assert ((covered == 1) | (q.probs == 0)).all() and (covered <= 1).all()
    assert ((probs > 0).sum(0) == counts).all()
    torch.testing.assert_close(q.log_prob(values).exp(), probs)


def _loss_fn(weights):
    def loss_fn(z):
        return torch.sin(z @ weights) + (z * torch.arange(z.shape[-1])).sum(-1) ** 2

    return loss_fn


@pytest.mark.parametrize("k", [None, 3])
def test_marginalize_matches_dense_sum_and_gradient(k):
    scores = _scores((4, 50), seed=2, scale=3.0).requires_grad_(True)
    weights = torch.randn(50, dtype=torch.float64, requires_grad=True)
    q = SparsemaxCategorical(scores, k=k)
    out = Marginalize()(q, _loss_fn(weights))
    eye = torch.eye(50, dtype=torch.float64)
    dense = (sparsemax(scores) * _loss_fn(weights)(eye)).sum(-1)
    torch.testing.assert_close(out.value, dense.detach(), rtol=0, atol=1e-6)
    got = torch.autograd.grad(out.surrogate.sum(), [scores, weights])
    expected = torch.autograd.grad(dense.sum(), [scores, weights])
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    size = int((q.probs > 0).sum(-1).max())
    assert out.loss_evals == size <= 10
    assert out.extras["support_size"].tolist() == (q.probs > 0).sum(-1).tolist()


def test_marginalize_product_of_units():
    scores = _scores((2, 2, 4), seed=3).requires_grad_(True)
    q = SparsemaxCategorical(scores).to_event(1)
    assert q.batch_shape == (2,) and q.event_shape == (2, 4)

    def loss_fn(z):
        return (z[..., 0, :] * torch.arange(4.0, dtype=z.dtype)).sum(-1) * z[..., 1, 2] + 1.0

    out = Marginalize()(q, loss_fn)
    p = sparsemax(scores)
    eye = torch.eye(4, dtype=torch.float64)
    dense = torch.zeros(2, dtype=torch.float64)
    for a, b in itertools.product(range(4), range(4)):
        z = torch.stack([eye[a], eye[b]])
        dense = dense + p[:, 0, a] * p[:, 1, b] * loss_fn(z)
    torch.testing.assert_close(out.value, dense.detach())
    torch.testing.assert_close(
        torch.autograd.grad(out.surrogate.sum(), scores)[0],
        torch.autograd.grad(dense.sum(), scores)[0],
    )
    assert out.loss_evals == SparsemaxCategorical(scores).support_size() ** 2
    with pytest.raises(ValueError, match="max_support"):
        Marginalize(max_support=1)(SparsemaxCategorical(torch.zeros(3, 4)), lambda z: z.sum(-1))


def test_gradient_survives_sampling_first():
    """The probabilities are cached; a first use under no_grad must not cache them detached."""
    scores = _scores((3, 5), seed=4).requires_grad_(True)
    q = SparsemaxCategorical(scores)
    q.sample((2,))
    out = Marginalize()(q, lambda z: z[..., 0])
    (grad,) = torch.autograd.grad(out.surrogate.sum(), scores)
    (expected,) = torch.autograd.grad(sparsemax(scores)[..., 0].sum(), scores)
    torch.testing.assert_close(grad, expected)


def test_log_prob_and_entropy():
    scores = torch.tensor([[2.0, 1.5, -1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    q = SparsemaxCategorical(scores)
    eye = torch.eye(4, dtype=torch.float64).unsqueeze(1)
    logp = q.log_prob(eye)
    assert logp.shape == (4, 1)
    torch.testing.assert_close(logp[:2, 0].exp(), torch.tensor([0.75, 0.25], dtype=torch.float64))
    assert torch.isneginf(logp[2:]).all()
    (grad,) = torch.autograd.grad(logp[1].sum() + logp[3].sum() * 0, scores)
    assert torch.isfinite(grad).all()
    # probabilities are cached with their graph (as torch.distributions does): a new instance
    # for a second backward pass
    q = SparsemaxCategorical(scores)
    (zero_grad,) = torch.autograd.grad(q.log_prob(eye[2]).sum(), scores)
    assert torch.isfinite(zero_grad).all()
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert q.entropy().item() == pytest.approx(expected)
    torch.testing.assert_close(q.logits, q.log_prob(eye).movedim(0, -1))
    with pytest.raises(ValueError, match="event shape"):
        q.log_prob(torch.zeros(3))


@pytest.mark.stat
def test_sampling_frequencies_match_probs():
    """Chi-square test per batch row, Bonferroni-corrected to a family-wise alpha of 1e-5."""
    torch.manual_seed(0)
    scores = torch.tensor(
        [
            [1.0, 0.8, 0.1, -2.0, 0.5, -torch.inf],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [3.0, 2.6, 2.5, 0, 0, 0],
        ]
    )
    q = SparsemaxCategorical(scores)
    n = 200_000
    counts = q.sample((n,)).sum(0).double()
    p = q.probs.double()
    assert (counts[p == 0] == 0).all()  # never a category of probability 0
    for row in range(scores.shape[0]):
        on = p[row] > 0
        expected = n * p[row][on]
        stat = ((counts[row][on] - expected) ** 2 / expected).sum()
        dof = torch.tensor((int(on.sum()) - 1) / 2, dtype=torch.float64)
        p_value = torch.special.gammaincc(dof, stat / 2).item() if dof > 0 else 1.0
        assert p_value > ALPHA / scores.shape[0], (row, p_value)


def test_this_chi_square_test_can_fail():
    """The same statistic rejects samples drawn from slightly wrong probabilities."""
    torch.manual_seed(1)
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    wrong = torch.multinomial(torch.tensor([0.52, 0.29, 0.19]), 200_000, replacement=True)
    counts = torch.bincount(wrong, minlength=3).double()
    stat = ((counts - 200_000 * p) ** 2 / (200_000 * p)).sum()
    assert torch.special.gammaincc(torch.tensor(1.0, dtype=torch.float64), stat / 2) < ALPHA


def test_noise_hooks():
    scores = _scores((2, 6), seed=5)
    q = SparsemaxCategorical(scores)
    z, noise = q.sample_with_noise((7,))
    assert z.shape == (7, 2, 6) and noise.shape == (7, 2, 6)
    assert torch.equal(q.from_noise(noise), z)
    assert (q.probs.expand_as(z)[z > 0] > 0).all()
    assert torch.equal(q.from_noise(torch.zeros(2, 6, dtype=torch.float64)), q.mode())
    # Gumbel-max on log q: the argmax of log q + noise
    expected = (q.probs.log() + noise).argmax(-1)
    assert torch.equal(z.argmax(-1), expected)


def test_relaxed_samples():
    scores = _scores((3, 7), seed=6).requires_grad_(True)
    q = SparsemaxCategorical(scores)
    noise = q.sample_noise((5,))
    y = q.relaxed_from_noise(noise, 0.5)
    assert y.shape == (5, 3, 7) and y.dtype == torch.float64
    torch.testing.assert_close(y.sum(-1), torch.ones(5, 3, dtype=torch.float64))
    assert (y[(q.probs == 0).expand_as(y)] == 0).all()
    (y * torch.randn(5, 3, 7, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(scores.grad).all()
    cold = q.relaxed_from_noise(noise, 1e-3)
    torch.testing.assert_close(cold, q.from_noise(noise), rtol=0, atol=1e-6)
    assert q.rsample_relaxed(1.0, (2,)).shape == (2, 3, 7)
    with pytest.raises(ValueError, match="tau"):
        q.relaxed_from_noise(noise, 0.0)
    with pytest.raises(TypeError, match="tau"):
        q.relaxed_from_noise(noise, "1")  # type: ignore[arg-type]


def test_mode_breaks_ties_towards_lowest_index():
    q = SparsemaxCategorical(torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]]))
    assert q.mode().argmax(-1).tolist() == [0, 1]


def test_local_variants():
    q = SparsemaxCategorical(_scores((2, 5), seed=7))
    z = q.sample((3,))
    lv = q.local_variants(z)
    assert lv.values.shape == (4, 3, 2, 5) and lv.probs.shape == (4, 3, 2)
    assert ((lv.values != z).sum(-1) == 2).all()
    p = q.probs.expand(3, 2, 5)
    torch.testing.assert_close(lv.probs, (lv.values * p).sum(-1))
    torch.testing.assert_close(lv.base_probs, (z * p).sum(-1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize(
    "scores",
    [
        [[1e4, -1e4, 1e4 - 0.5, 0.0]],
        [[-1e4, -1e4 + 0.3, -1e4 - 5, -1e4 + 0.1]],
        [[-torch.inf, 2.0, -torch.inf, -torch.inf]],
        [[0.5]],
    ],
)
def test_extreme_scores_and_dtypes(dtype, scores):
    s = torch.tensor(scores, dtype=dtype, requires_grad=True)
    q = SparsemaxCategorical(s)
    assert q.probs.dtype == dtype and torch.isfinite(q.probs).all()
    values, probs = q.support_probs()
    torch.testing.assert_close(probs.float().sum(0), torch.ones(1), rtol=0, atol=1e-2)
    assert torch.isfinite(q.log_prob(values)).all()
    assert torch.isfinite(q.entropy()).all()
    z = q.sample((4,))
    assert torch.isfinite(q.log_prob(z)).all()
    out = Marginalize()(q, lambda z: (z * torch.arange(z.shape[-1], dtype=z.dtype)).sum(-1))
    out.surrogate.sum().backward()
    assert torch.isfinite(s.grad).all()
    y = q.rsample_relaxed(0.3)
    assert torch.isfinite(y).all()


def test_argument_checks():
    with pytest.raises(ValueError, match="NaN"):
        SparsemaxCategorical(torch.tensor([[0.0, math.nan]]))
    with pytest.raises(ValueError, match=r"\+inf"):
        SparsemaxCategorical(torch.tensor([[0.0, math.inf]]))
    with pytest.raises(ValueError, match="-inf for every category"):
        SparsemaxCategorical(torch.full((2, 3), -math.inf))
    with pytest.raises(TypeError, match="floating-point"):
        SparsemaxCategorical(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="scores must be a torch"):
        SparsemaxCategorical([0.0, 1.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 1 dimension"):
        SparsemaxCategorical(torch.tensor(0.0))
    with pytest.raises(ValueError, match="k must be >= 1"):
        SparsemaxCategorical(torch.zeros(3), k=0)
    with pytest.raises(TypeError, match="k must be an int"):
        SparsemaxCategorical(torch.zeros(3), k=1.5)  # type: ignore[arg-type]
