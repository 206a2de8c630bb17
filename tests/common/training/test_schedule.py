"""Learning-rate schedules: warm-up, then constant, linear or cosine decay; a pure function of the step."""

from __future__ import annotations

import itertools
import math

import pytest

from common.training.schedule import LrSchedule


def test_constant_is_one_after_warmup():
    schedule = LrSchedule.over("constant", 100, 0.1)
    assert schedule.warmup_steps == 10
    assert [schedule.factor(t) for t in (0, 9)] == [pytest.approx(1 / 11), pytest.approx(10 / 11)]
    assert all(schedule.factor(t) == 1.0 for t in range(10, 100))


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_decay_is_monotone_never_zero_and_ends_small(kind):
    schedule = LrSchedule.over(kind, 50, 0.0)
    factors = [schedule.factor(t) for t in range(50)]
    assert all(a >= b for a, b in itertools.pairwise(factors))
    assert 0 < factors[-1] < 0.05 and factors[0] > 0.95


def test_cosine_midpoint_and_steps_past_the_end_keep_the_last_value():
    schedule = LrSchedule("cosine", total_steps=101, warmup_steps=0)
    assert schedule.factor(50) == pytest.approx(0.5 * (1 + math.cos(math.pi * 51 / 102)))
    assert schedule.factor(1000) == schedule.factor(100)


def test_a_run_split_into_rounds_takes_the_same_rates_as_an_uninterrupted_one():
    whole = LrSchedule.over("cosine", 30, 0.1)
    rounds = [[whole.factor(r * 10 + t) for t in range(10)] for r in range(3)]
    assert [f for chunk in rounds for f in chunk] == [whole.factor(t) for t in range(30)]


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="warmup < total"):
        LrSchedule("linear", total_steps=5, warmup_steps=5)
    assert LrSchedule.over("linear", 1, 0.5).warmup_steps == 0
