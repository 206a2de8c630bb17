"""Stopping processes: the whole group ends, SIGKILL follows an ignored SIGTERM, and nothing but the recorded
process's own group is ever signalled (a reused pid, or a process that does not lead its group, survives)."""

from __future__ import annotations

import subprocess

import psutil
import pytest

from common.errors import FederationError
from common.polling import wait_until
from common.processes import ProcessIdentity, start, stop

LONG = 300  # seconds: every process here is stopped by the test long before it would end by itself


@pytest.fixture
def started(tmp_path):
    """Start commands in their own process group; whatever a test leaves running is killed afterwards."""
    processes: list[subprocess.Popen[bytes]] = []

    def run(*command: str) -> subprocess.Popen[bytes]:
        process = start(command, log_file=tmp_path / "process.log")
        processes.append(process)
        return process

    yield run
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (ended, or a zombie waiting for its parent)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def children_of(process: subprocess.Popen[bytes], count: int) -> list[int]:
    """The pids of the process's children, once it has ``count`` of them."""
    parent = psutil.Process(process.pid)
    found = wait_until(
        lambda: [c.pid for c in parent.children()] if len(parent.children()) >= count else None,
        timeout=60,
        interval=0.05,
    )
    return found


def test_stop_ends_the_whole_process_group(started):
    leader = started("sh", "-c", f"sleep {LONG} & sleep {LONG} & wait")
    identity = ProcessIdentity.of(leader.pid)
    children = children_of(leader, 2)
    assert identity.is_running()

    assert stop(identity, grace=30) is True

    assert leader.wait(timeout=30) is not None
    wait_until(lambda: all(gone(pid) for pid in children), timeout=30, interval=0.1)
    assert not identity.is_running()
    assert stop(identity) is False  # reaped and gone: nothing left to signal


def test_sigkill_follows_when_sigterm_is_ignored(started):
    stubborn = started("sh", "-c", f"trap '' TERM; sleep {LONG} & wait")  # the sleep inherits the ignored SIGTERM
    identity = ProcessIdentity.of(stubborn.pid)
    (child,) = children_of(stubborn, 1)

    assert stop(identity, grace=1.0) is True

    assert stubborn.wait(timeout=30) == -9  # killed, not terminated
    wait_until(lambda: gone(child), timeout=30, interval=0.1)


def test_a_reused_pid_is_never_signalled(started):
    """A state file recorded pid P at start time T; P now belongs to a process started at another time."""
    bystander = started("sleep", str(LONG))
    actual = ProcessIdentity.of(bystander.pid)
    recorded = ProcessIdentity(bystander.pid, actual.create_time - 3600)  # the recorded process started an hour ago

    assert not recorded.is_running()
    assert recorded.holder() is None
    assert stop(recorded, grace=1.0) is False

    with pytest.raises(subprocess.TimeoutExpired):
        bystander.wait(timeout=2)  # still running: it was not signalled
    assert actual.is_running()


def test_a_process_that_does_not_lead_its_group_is_not_signalled(tmp_path):
    """Signalling the group of a process in OUR group would stop the caller itself (here: pytest)."""
    member = subprocess.Popen(["sleep", str(LONG)])  # same process group as the test runner
    try:
        identity = ProcessIdentity.of(member.pid)
        assert identity.is_running()
        assert stop(identity, grace=1.0) is False
        with pytest.raises(subprocess.TimeoutExpired):
            member.wait(timeout=1)
    finally:
        member.kill()
        member.wait(timeout=30)


def test_an_exited_process_is_not_running_even_before_it_is_reaped(started):
    finished = started("true")
    identity = ProcessIdentity.of(finished.pid)  # a zombie until waited for: its pid is still held
    wait_until(lambda: not identity.is_running(), timeout=30, interval=0.05)
    assert identity.holder() is not None  # the pid still belongs to it (not reusable yet)
    finished.wait(timeout=30)
    assert identity.holder() is None


def test_identity_of_a_missing_process_is_an_error(started):
    finished = started("true")
    finished.wait(timeout=30)
    with pytest.raises(FederationError, match=f"process {finished.pid} is not running"):
        ProcessIdentity.of(finished.pid)
