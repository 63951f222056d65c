import math

import pytest
import torch

from latentgrad.schedules import Constant, ExponentialDecay, LinearGrowth, Schedule


def test_exponential_decay_values_at_update_boundaries():
    s = ExponentialDecay(rate=1e-4, every=500, minimum=0.5)
    assert s.value_at(0) == 1.0
    assert s.value_at(499) == 1.0  # not updated before step N
    assert s.value_at(500) == pytest.approx(math.exp(-0.05), rel=1e-15)
    assert s.value_at(999) == s.value_at(500)
    assert s.value_at(1000) == pytest.approx(math.exp(-0.1), rel=1e-15)
    assert s.value_at(10**6) == 0.5  # floored at the minimum
    # exp(-1e-4 t) reaches 0.5 at t = 6931.47..., so the last update above the floor is 6500.
    assert s.value_at(6999) == pytest.approx(math.exp(-0.65), rel=1e-15)
    assert s.value_at(7000) == 0.5


def test_exponential_decay_initial_and_every_one():
    s = ExponentialDecay(initial=2.0, rate=0.1, every=1, minimum=0.1)
    assert [round(s.value_at(t), 12) for t in range(3)] == [
        2.0,
        round(2 * math.exp(-0.1), 12),
        round(2 * math.exp(-0.2), 12),
    ]
    assert ExponentialDecay(rate=0.0, minimum=0.5).value_at(10**9) == 1.0


def test_linear_growth_values():
    s = LinearGrowth(initial=1.0, rate=0.04, every=10, maximum=5.0)
    assert s.value_at(0) == 1.0
    assert s.value_at(9) == 1.0
    assert s.value_at(10) == pytest.approx(1.4)
    assert s.value_at(19) == pytest.approx(1.4)
    assert s.value_at(10**6) == 5.0


def test_constant():
    s = Constant(0.3)
    s.step(1000)
    assert s.value == 0.3
    assert s() == 0.3


def test_step_counter_and_value():
    s = ExponentialDecay(rate=1e-4, every=500)
    assert int(s.step_count) == 0
    for _ in range(499):
        s.step()
    assert s.value == 1.0
    assert s.step() == pytest.approx(math.exp(-0.05))
    assert int(s.step_count) == 500
    assert s.step(500) == pytest.approx(math.exp(-0.1))
    assert s.step(0) == pytest.approx(math.exp(-0.1))


@pytest.mark.parametrize(
    "make",
    [
        lambda: ExponentialDecay(rate=1e-3, every=7, minimum=0.2),
        lambda: LinearGrowth(rate=0.01, every=3, maximum=4.0),
        lambda: Constant(1.5),
    ],
)
def test_state_dict_round_trip(make):
    a = make()
    a.step(1234)
    state = a.state_dict()
    assert set(state) == {"step_count"}
    b = make()
    assert b.value != a.value or isinstance(a, Constant)
    b.load_state_dict(state)
    assert int(b.step_count) == 1234
    assert b.value == a.value
    # The loaded copy keeps counting on its own.
    b.step()
    assert int(a.step_count) == 1234


def test_schedule_is_a_module_and_moves_with_its_owner():
    owner = torch.nn.Module()
    owner.tau = ExponentialDecay(rate=1e-4)
    owner.tau.step(3)
    assert owner.state_dict()["tau.step_count"].item() == 3
    owner.to(torch.float64)  # the integer counter is not cast
    assert owner.tau.step_count.dtype == torch.long


def test_base_schedule_is_abstract():
    with pytest.raises(NotImplementedError):
        _ = Schedule().value


@pytest.mark.parametrize(
    ("make", "match", "error"),
    [
        (lambda: ExponentialDecay(rate=-1e-4), "rate", ValueError),
        (lambda: ExponentialDecay(rate=float("nan")), "rate", ValueError),
        (lambda: ExponentialDecay(rate="fast"), "rate", TypeError),
        (lambda: ExponentialDecay(rate=1e-4, minimum=0.0), "minimum", ValueError),
        (lambda: ExponentialDecay(rate=1e-4, minimum=2.0), "minimum", ValueError),
        (lambda: ExponentialDecay(rate=1e-4, every=0), "every", ValueError),
        (lambda: ExponentialDecay(rate=1e-4, every=1.5), "every", TypeError),
        (lambda: ExponentialDecay(initial=0.0, rate=1e-4), "initial", ValueError),
        (lambda: LinearGrowth(rate=-0.1), "rate", ValueError),
        (lambda: LinearGrowth(rate=0.1, maximum=0.5), "maximum", ValueError),
        (lambda: LinearGrowth(rate=0.1, maximum=float("inf")), "maximum", ValueError),
        (lambda: LinearGrowth(rate=0.1, every=0), "every", ValueError),
        (lambda: Constant(float("inf")), "value", ValueError),
        (lambda: Constant(True), "value", TypeError),
        (lambda: Constant(1.0).step(-1), "n", ValueError),
        (lambda: ExponentialDecay(rate=0.1).value_at(-1), "t", ValueError),
    ],
)
def test_validation(make, match, error):
    with pytest.raises(error, match=match):
        make()
