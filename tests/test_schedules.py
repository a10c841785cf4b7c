"""Tests for nas.schedules: the registered schedule functions and TemperatureScheduler."""
from __future__ import annotations

import math

import pytest
import torch

from nas import schedules
from nas.errors import InputError
from nas.registry import SCHEDULES
from nas.schedules import TAU_FLOOR, TemperatureScheduler

DECAYING = ["linear", "exponential", "cosine"]
ALL = DECAYING + ["step", "constant"]


def taus(sched: TemperatureScheduler, n: int) -> list[float]:
    """The scheduler's tau at its current step and the next n - 1 steps (advances it n times)."""
    out = []
    for _ in range(n):
        out.append(sched.tau)
        sched.step()
    return out


def test_builtin_schedules_are_registered():
    expected = {"linear": schedules.linear, "exponential": schedules.exponential,
                "cosine": schedules.cosine, "step": schedules.step_decay,
                "constant": schedules.constant}
    for name, fn in expected.items():
        assert name in SCHEDULES
        assert SCHEDULES.get(name) is fn


# --- end points and shape ---------------------------------------------------------------------

@pytest.mark.parametrize("name", DECAYING)
@pytest.mark.parametrize("total", [2, 5, 250])
@pytest.mark.parametrize("tau_max,tau_min", [(10.0, 0.1), (1.0, 0.5), (5.0, 5.0)])
def test_decaying_end_points(name, total, tau_max, tau_min):
    fn = SCHEDULES.get(name)
    assert fn(0, total, tau_max, tau_min) == pytest.approx(tau_max, abs=1e-12)
    for step in range(total - 1, total + 50):  # reaches tau_min at total - 1 and stays there
        assert fn(step, total, tau_max, tau_min) == pytest.approx(tau_min, abs=1e-12), step
    # the same through the scheduler
    seq = taus(TemperatureScheduler(name, total, tau_max, tau_min), total + 50)
    assert seq[0] == pytest.approx(tau_max, abs=1e-12)
    assert seq[total - 1:] == pytest.approx([tau_min] * 51, abs=1e-12)


def test_gdas_linear_formula_at_every_epoch():
    epochs, tau_max, tau_min = 250, 10.0, 0.1
    sched = TemperatureScheduler("linear", total=epochs, tau_max=tau_max, tau_min=tau_min)
    for epoch in range(epochs):
        expected = tau_max - (tau_max - tau_min) * epoch / (epochs - 1)
        assert sched.tau == pytest.approx(expected, abs=1e-12), epoch
        sched.step()
    assert sched.last_step == epochs


@pytest.mark.parametrize("name,mid", [
    ("linear", lambda a, b: (a + b) / 2),          # arithmetic mean halfway
    ("exponential", lambda a, b: math.sqrt(a * b)),  # geometric mean halfway
    ("cosine", lambda a, b: (a + b) / 2),          # cos(pi / 2) = 0
])
def test_decaying_shape_and_monotonicity(name, mid):
    total, tau_max, tau_min = 201, 8.0, 0.02
    seq = taus(TemperatureScheduler(name, total, tau_max, tau_min), total + 30)
    assert seq[100] == pytest.approx(mid(tau_max, tau_min), rel=1e-12)
    # strictly decreasing until the last step, constant afterwards
    assert all(b < a for a, b in zip(seq[:total], seq[1:total]))
    assert all(b <= a for a, b in zip(seq, seq[1:]))
    assert min(seq) >= tau_min - 1e-12
    if name == "cosine":  # flat at both ends: the first and last decrements are the smallest
        steps = [a - b for a, b in zip(seq[:total], seq[1:total])]
        assert steps[0] < steps[100] and steps[-1] < steps[100]
    if name == "exponential":  # constant ratio between consecutive steps
        ratios = [b / a for a, b in zip(seq[:total], seq[1:total])]
        assert max(ratios) - min(ratios) < 1e-12


def test_step_schedule():
    tau_max, tau_min, every, gamma = 8.0, 0.3, 3, 0.5
    sched = TemperatureScheduler("step", total=100, tau_max=tau_max, tau_min=tau_min,
                                 every=every, gamma=gamma)
    seq = taus(sched, 100)
    for s, tau in enumerate(seq):
        assert tau == pytest.approx(max(tau_max * gamma ** (s // every), tau_min), rel=1e-12)
        assert tau >= tau_min
        if s > 0:
            if s % every == 0:
                assert tau == pytest.approx(max(seq[s - 1] * gamma, tau_min), rel=1e-12)
            else:
                assert tau == seq[s - 1]
    assert seq[-1] == tau_min  # 8 * 0.5^k falls below 0.3 after 5 halvings, then is held
    # defaults: every=1, gamma=0.5
    seq = taus(TemperatureScheduler("step", total=10, tau_max=1.0, tau_min=0.01), 10)
    assert seq[:7] == pytest.approx([1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625], rel=1e-12)
    assert seq[7:] == [0.01, 0.01, 0.01]


def test_constant_schedule():
    seq = taus(TemperatureScheduler("constant", total=20, tau_max=3.5, tau_min=0.1), 40)
    assert seq == [3.5] * 40


# --- resume -----------------------------------------------------------------------------------

RESUME_CASES = [
    ("linear", {}), ("exponential", {}), ("cosine", {}), ("constant", {}),
    ("step", {"every": 4, "gamma": 0.7}),
]


@pytest.mark.parametrize("name,options", RESUME_CASES)
def test_state_dict_resume(name, options, tmp_path):
    a = TemperatureScheduler(name, total=50, tau_max=5.0, tau_min=0.05, per="iteration", **options)
    taus(a, 17)
    state = a.state_dict()
    assert state["last_step"] == 17

    b = TemperatureScheduler("constant", total=3, tau_max=1.0, tau_min=1.0)  # different args
    b.load_state_dict(state)
    assert b.state_dict() == state
    assert (b.schedule, b.total, b.per, b.options) == (name, 50, "iteration", options)

    path = tmp_path / "sched.pt"
    torch.save(a.state_dict(), path)
    c = TemperatureScheduler("linear", total=1000, tau_max=2.0, tau_min=1.0)
    c.load_state_dict(torch.load(path, weights_only=True))
    assert c.state_dict() == state

    expected = taus(a, 60)  # crosses the end of the schedule (step 49)
    assert taus(b, 60) == expected
    assert taus(c, 60) == expected
    # the loaded state is a copy: mutating the dict afterwards changes nothing
    state["options"]["gamma"] = 123.0
    state["last_step"] = 0
    assert b.state_dict()["last_step"] == 77 and b.options == options


# --- validation -------------------------------------------------------------------------------

def test_per_values():
    assert TemperatureScheduler("linear", total=10, per="iteration").per == "iteration"
    assert TemperatureScheduler("linear", total=10).per == "epoch"
    with pytest.raises(InputError):
        TemperatureScheduler("linear", total=10, per="bogus")


@pytest.mark.parametrize("tau_max,tau_min", [
    (10.0, 0.0), (10.0, -0.1), (0.05, 0.1), (float("nan"), 0.1), (10.0, float("nan")),
    (float("inf"), 0.1),
])
def test_bad_temperatures_raise_input_error(tau_max, tau_min):
    with pytest.raises(InputError):
        TemperatureScheduler("linear", total=10, tau_max=tau_max, tau_min=tau_min)


def test_bad_total_and_options_raise_input_error():
    with pytest.raises(InputError):
        TemperatureScheduler("linear", total=0)
    with pytest.raises(InputError, match="gamma"):  # an option the schedule does not take
        TemperatureScheduler("linear", total=10, gamma=0.5)
    assert issubclass(InputError, ValueError)


@pytest.mark.parametrize("typo,closest", [
    ("linera", "linear"), ("cosin", "cosine"), ("exponental", "exponential"),
])
def test_unknown_schedule_suggests_closest_name(typo, closest):
    with pytest.raises(InputError) as info:
        TemperatureScheduler(typo, total=10)
    assert f"did you mean '{closest}'" in str(info.value)


# --- TAU_FLOOR ----------------------------------------------------------------------------------

PLUGIN = "test_plugin_zero_schedule"


@pytest.fixture
def zero_schedule():
    calls = []

    def zero(step, total, tau_max, tau_min):
        calls.append(step)
        return 0.0 if step % 2 == 0 else -1.0  # 0 and a negative value

    SCHEDULES.register(PLUGIN, zero)
    yield calls
    del SCHEDULES._entries[PLUGIN]


def test_tau_never_below_floor_for_plugin_schedule(zero_schedule):
    sched = TemperatureScheduler(PLUGIN, total=10, tau_max=1.0, tau_min=0.5)
    seq = taus(sched, 6)
    assert zero_schedule  # the plugin was really used
    assert seq == [TAU_FLOOR] * 6
    assert TAU_FLOOR > 0


def test_plugin_registration_is_cleaned_up():
    # runs after the test above (file order) and checks the fixture removed its entry
    assert PLUGIN not in SCHEDULES


def test_tau_floor_applies_to_builtin_schedule_with_tiny_tau_min():
    sched = TemperatureScheduler("linear", total=5, tau_max=1.0, tau_min=1e-7)
    seq = taus(sched, 8)
    assert seq[0] == 1.0
    assert seq[4:] == [TAU_FLOOR] * 4
    assert min(seq) >= TAU_FLOOR


# --- contracts found untested by mutation testing (scripts/mutation.py) ------------------------

def test_a_one_step_schedule_is_at_tau_min():
    for name in DECAYING:
        assert TemperatureScheduler(name, total=1, tau_max=4.0, tau_min=0.5).tau == pytest.approx(0.5)
    assert schedules._progress(0, 1) == 1.0 and schedules._progress(3, 0) == 1.0
    assert schedules._progress(1, 3) == 0.5 and schedules._progress(5, 3) == 1.0


def test_the_scheduler_defaults():
    s = TemperatureScheduler()
    assert s.state_dict() == {"schedule": "linear", "total": 1, "per": "epoch", "tau_max": 10.0,
                              "tau_min": 0.1, "options": {}, "last_step": 0}
    assert s.tau == pytest.approx(0.1) and s.at(0) == s.tau


def test_at_reads_any_step_without_moving():
    s = TemperatureScheduler("linear", total=11, tau_max=2.0, tau_min=1.0)
    assert [s.at(k) for k in (0, 5, 10, 20)] == pytest.approx([2.0, 1.5, 1.0, 1.0])
    assert s.last_step == 0 and s.tau == 2.0


@pytest.mark.parametrize("kwargs, message", [
    ({"per": "batch"}, "tau.per must be 'epoch' or 'iteration', got 'batch'"),
    ({"tau_max": 0.05, "tau_min": 0.1}, "temperature needs tau_max >= tau_min > 0, got tau_max=0.05, tau_min=0.1"),
    ({"total": 0}, "a temperature schedule needs total >= 1 steps, got 0"),
])
def test_bad_arguments_say_what_to_fix(kwargs, message):
    with pytest.raises(InputError) as info:
        TemperatureScheduler("linear", **{"total": 10, **kwargs})
    assert str(info.value) == message


@pytest.fixture
def plugin():
    """Register a schedule under a test name; removed afterwards."""
    names = []

    def register(fn):
        name = f"test_plugin_{len(names)}"
        SCHEDULES.register(name, fn)
        names.append(name)
        return name

    yield register
    for name in names:
        del SCHEDULES._entries[name]


def test_construction_checks_every_step_a_run_reaches(plugin):
    """Steps 0..total are each evaluated once when the scheduler is built (so a bad schedule
    fails before the run), beyond 100,000 steps only the first, middle and last."""
    seen = []
    name = plugin(lambda step, total, a, b: seen.append(step) or 1.0)
    TemperatureScheduler(name, total=7)
    assert seen == list(range(8))
    for total, expected in ((100_000, 100_001), (100_001, 3)):
        seen.clear()
        TemperatureScheduler(name, total=total)
        assert len(seen) == expected, total
    seen.clear()
    TemperatureScheduler(name, total=200_001)
    assert seen == [0, 100_000, 200_001] and all(type(s) is int for s in seen)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, "1.0", None])
def test_a_schedule_must_return_a_finite_number(plugin, value):
    name = plugin(lambda step, total, a, b: value if step == 3 else 1.0)
    with pytest.raises(InputError) as info:
        TemperatureScheduler(name, total=5)
    assert str(info.value) == (f"temperature schedule '{name}' returned {value!r} at step 3; it "
                               "must return a finite number")


def test_a_schedule_that_raises_is_named_with_its_error(plugin):
    name = plugin(lambda step, total, a, b: 1.0 / (step - 2))
    with pytest.raises(InputError) as info:
        TemperatureScheduler(name, total=5)
    assert str(info.value) == (f"temperature schedule '{name}' failed at step 2: "
                               "ZeroDivisionError: float division by zero")


@pytest.mark.parametrize("options, bad", [
    ({"every": 0}, "every=0, gamma=0.5"), ({"gamma": 0.0}, "every=1, gamma=0.0"),
    ({"gamma": 1.5}, "every=1, gamma=1.5"), ({"every": 2, "gamma": -0.5}, "every=2, gamma=-0.5"),
])
def test_the_step_schedule_checks_its_options(options, bad):
    with pytest.raises(InputError) as info:
        TemperatureScheduler("step", total=4, tau_max=2.0, tau_min=0.5, **options)
    assert str(info.value) == ("temperature schedule 'step' failed at step 0: ValueError: the step "
                               f"schedule needs every >= 1 and 0 < gamma <= 1, got {bad}")
    # gamma = 1 is allowed: the temperature stays at tau_max
    assert taus(TemperatureScheduler("step", total=4, tau_max=2.0, tau_min=0.5, gamma=1.0), 4) == [2.0] * 4


def test_at_refuses_a_non_finite_value_past_the_checked_steps(plugin):
    name = plugin(lambda step, total, a, b: float("nan") if step > total else 1.0)
    sched = TemperatureScheduler(name, total=5)
    assert sched.at(5) == 1.0
    with pytest.raises(ValueError) as info:
        sched.at(7)
    assert str(info.value) == f"temperature schedule '{name}' returned nan at step 7"
