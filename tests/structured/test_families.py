"""Properties every structured family must have, checked on small instances by enumeration.

* the traces' probabilities sum to 1 and the structures' too; ``log_prob`` agrees;
* sampled traces and structures follow the exact law (chi-square, alpha 1e-5 per test);
* ``E ~ p(E | T)`` makes the algorithm take ``T`` again, and ``T`` then ``E | T`` has the law of
  the unconditional noise (two-sample Kolmogorov-Smirnov, alpha 1e-5 per test, Bonferroni over
  the statistics);
* extreme and half-precision scores give finite results and gradients; no graph under no_grad.

Each statistical test has a fixed seed and a false-failure rate below 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from latentgrad.distributions import StructuredDistribution
from latentgrad.structured import enumerate_traces, run, trace_log_prob
from latentgrad.testing.examples import FamilyExample, family_examples
from latentgrad.testing.stats import chi_square_pvalue, ks_critical_value, ks_statistic

F64 = torch.float64
ALPHA = 1e-5

# The structured families of the registry of examples (those sampled with a trace).
EXAMPLES: dict[str, FamilyExample] = {f.name: f for f in family_examples(capability="has_trace")}
NAMES = sorted(EXAMPLES)


def _family(name: str, dtype: torch.dtype) -> StructuredDistribution:
    return EXAMPLES[name].dist(dtype)


def _flat_rows(q: StructuredDistribution) -> tuple[torch.Tensor, torch.Tensor]:
    theta = q.item_scores().detach().reshape(-1, q.num_items)
    return theta, torch.isfinite(theta)


@pytest.mark.parametrize("name", NAMES)
def test_trace_probabilities_sum_to_one(name: str) -> None:
    q = _family(name, F64)
    theta, mask = _flat_rows(q)
    enum = enumerate_traces(q.algorithm, mask)
    p = trace_log_prob(theta[enum.row], enum.trace).exp()
    totals = torch.zeros(theta.shape[0], dtype=F64).index_add(0, enum.row, p)
    torch.testing.assert_close(totals, torch.ones_like(totals), rtol=0, atol=1e-12)
    # every enumerated trace is the trace of its own structure when replayed
    replay = run(q.algorithm, q._costs(_noise_for(enum.trace, theta[enum.row])), mask[enum.row])
    assert torch.equal(replay[1].choices, enum.trace.choices)


def _noise_for(trace, theta):  # noise that makes the algorithm follow ``trace``
    from latentgrad.structured import conditional_noise

    return conditional_noise(theta, trace)


@pytest.mark.parametrize("name", NAMES)
def test_structure_probabilities_and_log_prob(name: str) -> None:
    q = _family(name, F64)
    values, probs = q.support_probs()
    torch.testing.assert_close(probs.sum(0), torch.ones(q.batch_shape, dtype=F64))
    assert values.shape == (probs.shape[0], *q.batch_shape, *q.event_shape)
    logp = q.log_prob(values)
    positive = probs > 0
    torch.testing.assert_close(logp.exp()[positive], probs[positive], rtol=1e-9, atol=1e-12)
    assert values.shape[0] <= q.support_size()
    h = q.entropy()
    assert h.shape == q.batch_shape and bool((h > 0).all())


def _index_of(samples: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Index of each sample (n, *event) among ``values`` (S, *event); -1 when absent."""
    eq = (samples.unsqueeze(1) == values.unsqueeze(0)).flatten(2).all(-1)
    idx = eq.float().argmax(-1)
    return torch.where(eq.any(-1), idx, torch.full_like(idx, -1))


@pytest.mark.stat
@pytest.mark.parametrize("name", NAMES)
def test_structure_frequencies_chi_square(name: str) -> None:
    torch.manual_seed(10)
    q = _family(name, F64)
    n = 20000
    z = q.sample((n,))
    values, probs = q.support_probs()
    for b in range(q.batch_shape[0]):
        idx = _index_of(z[:, b], values[:, b])
        assert bool((idx >= 0).all()), "a sample outside the support"
        counts = torch.bincount(idx, minlength=values.shape[0])
        pvalue = chi_square_pvalue(counts, probs[:, b])
        assert pvalue > ALPHA / 2, f"{name}[{b}] structure frequencies: p = {pvalue:.2e}"


@pytest.mark.stat
@pytest.mark.parametrize("name", NAMES)
def test_trace_frequencies_chi_square(name: str) -> None:
    torch.manual_seed(11)
    q = _family(name, F64)
    n = 20000
    _, _, trace = q.sample_with_trace((n,))
    theta, mask = _flat_rows(q)
    for b in range(q.batch_shape[0]):
        enum = enumerate_traces(q.algorithm, mask[b : b + 1])
        p = trace_log_prob(theta[b], enum.trace).exp()
        idx = _index_of(trace.choices[:, b], enum.trace.choices)
        assert bool((idx >= 0).all()), "a sampled trace that the enumeration does not know"
        counts = torch.bincount(idx, minlength=p.shape[0])
        pvalue = chi_square_pvalue(counts, p)
        assert pvalue > ALPHA / 2, f"{name}[{b}] trace frequencies: p = {pvalue:.2e}"


@pytest.mark.parametrize("name", NAMES)
def test_conditional_noise_reproduces_the_trace(name: str) -> None:
    torch.manual_seed(12)
    q = _family(name, F64)
    z, _, trace = q.sample_with_trace((500,))
    noise = q.conditional_noise(trace)
    z2, trace2 = q.trace_from_noise(noise)
    assert torch.equal(trace2.choices, trace.choices)
    assert torch.equal(trace2.candidates, trace.candidates)
    assert torch.equal(z2, z)


@pytest.mark.stat
@pytest.mark.parametrize("name", NAMES)
def test_trace_then_conditional_noise_has_the_noise_law(name: str) -> None:
    torch.manual_seed(13)
    q = _family(name, F64)
    n = 20000
    _, _, trace = q.sample_with_trace((n,))
    _, other, _ = q.sample_with_trace((n,))  # decorrelate the two samples
    cond = q.conditional_noise(trace)

    def stats(x: torch.Tensor) -> torch.Tensor:
        present = torch.isfinite(x)
        e = torch.where(present, x.exp(), torch.zeros_like(x))
        joint = torch.stack([e.sum(-1), e.amax(-1), (e * torch.arange(x.shape[-1])).sum(-1)], -1)
        return torch.cat([x, joint], -1).flatten(1)

    a, b = stats(cond), stats(other)
    d = ks_statistic(a, b)
    crit = ks_critical_value(n, n, ALPHA / d.numel())
    assert float(d.max()) < crit, f"{name}: KS statistic {float(d.max()):.4f} >= {crit:.4f}"


def _with_scores(base: StructuredDistribution, scores: torch.Tensor) -> StructuredDistribution:
    """The same family and settings as ``base`` with other scores."""
    return base._map_params(lambda _: scores, base.batch_shape)  # type: ignore[return-value]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
def test_half_precision_and_extreme_scores_stay_finite(name: str, dtype: torch.dtype) -> None:
    torch.manual_seed(14)
    base = _family(name, F64)
    for scale in (1.0, 1e4):
        scores = (base.scores * scale).to(dtype).requires_grad_(True)
        q = _with_scores(base, scores)
        z, noise, trace = q.sample_with_trace((64,))
        assert z.dtype in (dtype, torch.long)
        assert bool(
            torch.isfinite(noise[torch.isfinite(q.item_scores().detach()).expand_as(noise)]).all()
        )
        lp = q.trace_log_prob(trace)
        ln = q.noise_log_prob(noise)
        assert bool(torch.isfinite(lp).all()) and bool(torch.isfinite(ln).all())
        (lp.sum() + ln.sum()).backward()
        assert scores.grad is not None and bool(torch.isfinite(scores.grad).all())
        cond = q.conditional_noise(trace)
        assert torch.equal(q.trace_from_noise(cond)[1].choices, trace.choices)
        assert q.mode().shape == q.batch_shape + q.event_shape


@pytest.mark.parametrize("name", NAMES)
def test_no_graph_under_no_grad(name: str) -> None:
    base = _family(name, F64)
    scores = base.scores.clone().requires_grad_(True)
    with torch.no_grad():
        q = _with_scores(base, scores)
        _, noise, trace = q.sample_with_trace((4,))
        lp = q.trace_log_prob(trace)
        cond = q.conditional_noise(trace)
    assert not lp.requires_grad and not cond.requires_grad and not noise.requires_grad


@pytest.mark.parametrize("name", NAMES)
def test_batch_shapes_expand_and_sample_shapes(name: str) -> None:
    q = _family(name, F64)
    big = q.expand((3, *q.batch_shape))
    z, noise, trace = big.sample_with_trace((5,))
    assert z.shape == (5, 3, *q.batch_shape, *q.event_shape)
    assert noise.shape == (5, 3, *q.batch_shape, q.num_items)
    assert big.trace_log_prob(trace).shape == (5, 3, *q.batch_shape)
    assert big.noise_log_prob(noise).shape == (5, 3, *q.batch_shape)
    assert big.mode().shape == (3, *q.batch_shape, *q.event_shape)
    assert torch.equal(big.mode()[0], q.mode())
