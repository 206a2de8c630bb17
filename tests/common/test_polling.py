"""The one polling helper: answers, "not yet", transient errors, final errors and the deadline, on a fake clock."""

from __future__ import annotations

import threading

import pytest

from common.polling import WaitTimeout, wait_until


class FakeClock:
    """A clock that only moves when the waiter sleeps, recording every sleep."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def answers(*values):
    """A probe giving ``values`` one per call, counting its calls."""
    remaining = list(values)

    def probe():
        probe.calls += 1
        value = remaining.pop(0)
        if isinstance(value, Exception):
            raise value
        return value

    probe.calls = 0
    return probe


def test_returns_the_first_answer_and_polls_at_the_interval():
    clock = FakeClock()
    probe = answers(None, None, "ready")
    assert wait_until(probe, timeout=10, interval=0.5, clock=clock, sleep=clock.sleep) == "ready"
    assert probe.calls == 3 and clock.sleeps == [0.5, 0.5]


def test_none_and_false_mean_not_yet_but_falsy_values_are_answers():
    clock = FakeClock()
    assert wait_until(answers(None, False, 0), timeout=10, interval=1, clock=clock, sleep=clock.sleep) == 0
    assert wait_until(answers(False, []), timeout=10, interval=1, clock=clock, sleep=clock.sleep) == []


def test_timeout_asks_once_more_at_the_deadline_and_never_sleeps_past_it():
    clock = FakeClock()
    probe = answers(None, None, None, None)
    with pytest.raises(WaitTimeout) as info:
        wait_until(probe, timeout=2.5, interval=1.0, clock=clock, sleep=clock.sleep)
    assert clock.sleeps == [1.0, 1.0, 0.5]  # the last sleep is cut to end exactly at the deadline
    assert probe.calls == 4  # at 0, 1, 2 and 2.5 s
    assert info.value.waited == pytest.approx(2.5) and info.value.last_error is None
    assert isinstance(info.value, TimeoutError)


def test_an_answer_at_the_deadline_is_not_a_timeout():
    clock = FakeClock()
    probe = answers(None, None, None, "just in time")
    assert wait_until(probe, timeout=2.5, interval=1.0, clock=clock, sleep=clock.sleep) == "just in time"


def test_transient_errors_are_retried_and_the_last_one_is_reported():
    clock = FakeClock()
    probe = answers(ConnectionRefusedError("refused"), OSError("unreachable"), "up")
    assert wait_until(probe, timeout=10, interval=1, retry_on=(OSError,), clock=clock, sleep=clock.sleep) == "up"

    probe = answers(ConnectionRefusedError("first"), ConnectionRefusedError("last"))
    with pytest.raises(WaitTimeout) as info:
        wait_until(probe, timeout=1, interval=1, retry_on=(OSError,), clock=clock, sleep=clock.sleep)
    assert str(info.value.last_error) == "last" and "last" in str(info.value)
    assert info.value.__cause__ is info.value.last_error


def test_other_errors_end_the_wait_at_once():
    clock = FakeClock()
    probe = answers(None, PermissionError("final"), "never asked")
    with pytest.raises(PermissionError, match="final"):
        wait_until(probe, timeout=10, interval=1, retry_on=(ConnectionError,), clock=clock, sleep=clock.sleep)
    assert probe.calls == 2


def test_no_timeout_waits_as_long_as_it_takes():
    clock = FakeClock()
    probe = answers(*([None] * 500), "done")
    assert wait_until(probe, timeout=None, interval=2.0, clock=clock, sleep=clock.sleep) == "done"
    assert clock.now == pytest.approx(100.0 + 500 * 2.0)


def test_zero_timeout_asks_exactly_once():
    clock = FakeClock()
    probe = answers(None)
    with pytest.raises(WaitTimeout):
        wait_until(probe, timeout=0, interval=1, clock=clock, sleep=clock.sleep)
    assert probe.calls == 1 and clock.sleeps == []


@pytest.mark.parametrize(("timeout", "interval"), [(1, 0), (1, -1), (-1, 1)])
def test_nonsense_arguments_are_refused(timeout, interval):
    with pytest.raises(ValueError):
        wait_until(lambda: True, timeout=timeout, interval=interval)


def test_waiting_for_enough_nodes_fits():
    """The shape of the strategy's wait for SuperNodes: the node list once there are enough, else not yet."""
    clock = FakeClock()
    connected = iter([[], [7], [7, 9], [7, 9, 11]])

    def enough():
        nodes = next(connected)
        return nodes if len(nodes) >= 2 else None

    assert wait_until(enough, timeout=60, interval=1.0, clock=clock, sleep=clock.sleep) == [7, 9]
    with pytest.raises(WaitTimeout):
        wait_until(lambda: None, timeout=3, interval=1.0, clock=clock, sleep=clock.sleep)


def test_real_clock_sees_a_condition_set_by_another_thread():
    flag = threading.Event()
    threading.Timer(0.2, flag.set).start()
    assert wait_until(flag.is_set, timeout=60, interval=0.05) is True
