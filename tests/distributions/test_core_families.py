"""Categorical, Bernoulli and Independent: shapes, probabilities, hooks and argument checks."""

import math

import pytest
import torch

import latentgrad as lg
from latentgrad.distributions import DiscreteDistribution


def _families(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return {
        "categorical": lg.Categorical(logits=torch.randn(2, 3, 4, generator=g, dtype=dtype)),
        "bernoulli": lg.Bernoulli(logits=torch.randn(2, 3, generator=g, dtype=dtype)),
        "independent": lg.Categorical(
            logits=torch.randn(2, 3, 3, generator=g, dtype=dtype)
        ).to_event(1),
    }


@pytest.mark.parametrize("name", ["categorical", "bernoulli", "independent"])
def test_support_probabilities_sum_to_one_and_match_log_prob(name):
    q = _families()[name]
    values, probs = q.support_probs()
    assert values.shape == (q.support_size(), *q.batch_shape, *q.event_shape)
    torch.testing.assert_close(probs.sum(0), torch.ones(q.batch_shape, dtype=torch.float64))
    torch.testing.assert_close(q.log_prob(values).exp(), probs)
    # every support value is distinct
    flat = values.reshape(values.shape[0], q.batch_shape.numel(), -1)[:, 0]
    assert len({tuple(row.tolist()) for row in flat}) == values.shape[0]


@pytest.mark.parametrize("name", ["categorical", "bernoulli", "independent"])
def test_entropy_matches_enumeration(name):
    q = _families()[name]
    _, probs = q.support_probs()
    expected = -(probs * probs.log()).sum(0)
    torch.testing.assert_close(q.entropy(), expected)


@pytest.mark.parametrize("name", ["categorical", "bernoulli", "independent"])
def test_samples_have_the_declared_shape_and_lie_in_the_support(name):
    q = _families()[name]
    z, noise = q.sample_with_noise((5,))
    assert z.shape == (5, *q.batch_shape, *q.event_shape)
    assert torch.equal(q.from_noise(noise), z)
    assert torch.isfinite(q.log_prob(z)).all()
    assert q.log_prob(z).shape == (5, *q.batch_shape)
    assert set(z.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("name", ["categorical", "bernoulli", "independent"])
def test_local_variants_change_exactly_one_unit(name):
    q = _families()[name]
    z = q.sample((4,))
    lv = q.local_variants(z)
    unit_event_dims = 1 if name != "bernoulli" else 0
    changed = lv.values != z
    if unit_event_dims:
        changed = changed.any(-1)
    per_variant = changed.reshape(*changed.shape[: 1 + 1 + len(q.batch_shape)], -1).sum(-1)
    assert bool((per_variant == 1).all())
    # probabilities of the changed unit's value, plus the sampled values, sum to the number of units
    units = math.prod(q.unit_shape) if q.unit_shape else 1
    torch.testing.assert_close(
        lv.probs.sum(0) + lv.base_probs,
        torch.full((4, *q.batch_shape), float(units), dtype=torch.float64),
    )


def test_expand_keeps_the_family_and_hooks():
    q = lg.Categorical(logits=torch.randn(3, 4))
    e = q.expand((2, 3))
    assert isinstance(e, lg.Categorical) and e.batch_shape == (2, 3)
    assert e.sample((5,)).shape == (5, 2, 3, 4)
    b = lg.Bernoulli(logits=torch.randn(1, 4)).expand((6,))
    assert b.sample().shape == (6, 4)


def test_independent_shapes_and_product_support():
    q = lg.Categorical(logits=torch.zeros(8, 20, 10)).to_event(1)
    assert q.batch_shape == (8,) and q.event_shape == (20, 10)
    assert q.sample((2,)).shape == (2, 8, 20, 10)
    assert q.log_prob(q.sample((2,))).shape == (2, 8)
    with pytest.raises(ValueError, match="too many to enumerate"):
        q.support_probs()


def test_probs_argument_matches_logits():
    p = torch.tensor([0.2, 0.0, 0.8], dtype=torch.float64)
    q = lg.Categorical(probs=p)
    torch.testing.assert_close(q.probs, p)
    b = lg.Bernoulli(probs=torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64))
    torch.testing.assert_close(b.probs, torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64))
    assert torch.isfinite(b.log_prob(b.sample((3,)))).all()


def test_mode_and_mean():
    q = lg.Categorical(logits=torch.tensor([[0.0, 2.0, 1.0]]))
    assert q.mode().tolist() == [[0.0, 1.0, 0.0]]
    torch.testing.assert_close(q.mean.sum(-1), torch.ones(1))
    b = lg.Bernoulli(logits=torch.tensor([[-1.0, 2.0]]))
    assert b.mode().tolist() == [[0.0, 1.0]]


def test_zero_probability_category_never_sampled_and_finite_gradients():
    logits = torch.tensor([[0.0, -torch.inf, 1.0]], requires_grad=True)
    q = lg.Categorical(logits=logits)
    z = q.sample((2000,))
    assert z[..., 1].sum() == 0
    (q.log_prob(z).sum() + q.entropy().sum()).backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"logits": torch.tensor([0.0, float("nan")])}, ValueError, "logits contains NaN"),
        ({"logits": torch.tensor([0.0, float("inf")])}, ValueError, r"logits contains \+inf"),
        ({"logits": torch.full((2, 3), -float("inf"))}, ValueError, "logits is -inf"),
        ({"logits": [0.0, 1.0]}, TypeError, "logits must be a torch.Tensor"),
        ({"logits": torch.tensor([0, 1])}, TypeError, "logits must have a floating-point dtype"),
        ({"logits": torch.tensor(1.0)}, ValueError, "logits must have at least 1"),
        ({}, ValueError, "exactly one of logits and probs"),
        ({"probs": torch.tensor([-0.1, 1.1])}, ValueError, "probs"),
    ],
)
def test_categorical_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        lg.Categorical(**kwargs)


def test_bernoulli_rejects_bad_arguments():
    with pytest.raises(ValueError, match="logits contains NaN"):
        lg.Bernoulli(logits=torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="probs must be in"):
        lg.Bernoulli(probs=torch.tensor([1.5]))
    with pytest.raises(ValueError, match="2\\*\\*30"):
        lg.Bernoulli(logits=torch.zeros(30)).enumerate_support()


def test_log_prob_checks_the_event_shape():
    q = lg.Categorical(logits=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="event shape"):
        q.log_prob(torch.zeros(2, 3))


def test_independent_rejects_bad_arguments():
    q = lg.Categorical(logits=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="reinterpreted_batch_ndims"):
        q.to_event(2)
    with pytest.raises(TypeError, match="base_distribution"):
        lg.Independent(torch.distributions.Normal(0.0, 1.0), 0)


def test_all_families_are_torch_distributions():
    for q in _families().values():
        assert isinstance(q, torch.distributions.Distribution)
    assert issubclass(lg.Categorical, DiscreteDistribution)


def test_bernoulli_sampling_frequencies_match_probabilities():
    torch.manual_seed(1)
    probs = torch.tensor([0.05, 0.5, 0.9], dtype=torch.float64)
    n = 200_000
    z = lg.Bernoulli(probs=probs).sample((n,))
    se = (probs * (1 - probs) / n).sqrt()
    z_crit = lg.testing.bonferroni_z(1e-5, 3)
    assert ((z.mean(0) - probs).abs() <= z_crit * se).all()


@pytest.mark.parametrize("name", ["categorical", "bernoulli", "independent"])
def test_kl_divergence_matches_enumeration(name):
    p = _families()[name]
    g = torch.Generator().manual_seed(5)
    other = {
        "categorical": lambda: lg.Categorical(
            logits=torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
        ),
        "bernoulli": lambda: lg.Bernoulli(
            logits=torch.randn(2, 3, generator=g, dtype=torch.float64)
        ),
        "independent": lambda: lg.Categorical(
            logits=torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
        ).to_event(1),
    }[name]()
    values, probs = p.support_probs()
    expected = (probs * (probs.log() - other.log_prob(values))).sum(0)
    torch.testing.assert_close(torch.distributions.kl_divergence(p, other), expected)


def test_kl_with_zero_probabilities_is_finite_or_inf_as_it_should():
    p = lg.Categorical(logits=torch.tensor([0.0, -torch.inf, 0.0], requires_grad=True))
    q = lg.Categorical(logits=torch.tensor([0.0, 0.0, 0.0]))
    kl = torch.distributions.kl_divergence(p, q)
    assert torch.isfinite(kl)
    kl.backward()
    assert torch.isfinite(p.logits.grad).all()
    assert torch.distributions.kl_divergence(q, p).item() == float("inf")
