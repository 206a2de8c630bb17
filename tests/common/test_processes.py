"""Stopping process trees: every descendant ends, in whatever session it now lives (even after its parent died),
SIGKILL follows an ignored SIGTERM, and nothing outside the tree is ever signalled (a reused pid, or a process that
does not lead its own session, survives)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from common.errors import FederationError
from common.polling import wait_until
from common.processes import ProcessIdentity, ProcessTree, interrupts_ignored, start, stop_tree

LONG = 300  # seconds: every process here is stopped by the test long before it would end by itself

#: A root that, when terminated, starts one more process in a session of its own and waits for it.
SPAWNS_ON_SIGTERM = """
import signal, subprocess, sys, time
def on_term(signum, frame):
    late = subprocess.Popen(["sleep", "300"], start_new_session=True)
    with open(sys.argv[1], "w") as f:
        f.write(str(late.pid))
    late.wait()
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
open(sys.argv[2], "w").close()
time.sleep(300)
"""


@pytest.fixture
def started(tmp_path):
    """Start commands in a new session; whatever a test leaves running (and names in ``extra``) is killed after."""
    processes: list[subprocess.Popen[bytes]] = []
    extra: list[psutil.Process] = []

    def run(*command: str) -> subprocess.Popen[bytes]:
        process = start(command, log_file=tmp_path / "process.log")
        processes.append(process)
        return process

    run.extra = extra
    yield run
    for process in processes:
        with_children = [psutil.Process(process.pid)] if process.poll() is None else []
        for member in [*with_children, *(c for p in with_children for c in p.children(recursive=True)), *extra]:
            with contextlib.suppress(psutil.Error):
                member.kill()
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def gone(process: psutil.Process | int) -> bool:
    """True once the process no longer runs (ended, or a zombie waiting for its parent)."""
    try:
        process = process if isinstance(process, psutil.Process) else psutil.Process(process)
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def descendants(process: subprocess.Popen[bytes], count: int) -> list[psutil.Process]:
    """The process's descendants, once it has ``count`` of them and each runs ``sleep`` (so a ``setsid`` before
    it has taken effect)."""
    parent = psutil.Process(process.pid)

    def found() -> list[psutil.Process] | None:
        children = parent.children(recursive=True)
        with contextlib.suppress(psutil.Error):
            if len(children) >= count and all(child.name() == "sleep" for child in children):
                return children
        return None

    return wait_until(found, timeout=60, interval=0.05)


def test_stop_tree_ends_the_process_and_its_group(started):
    leader = started("sh", "-c", f"sleep {LONG} & sleep {LONG} & wait")
    identity = ProcessIdentity.of(leader.pid)
    children = descendants(leader, 2)
    assert identity.is_running()

    assert stop_tree(identity, grace=30) is True

    assert leader.wait(timeout=30) is not None
    wait_until(lambda: all(gone(child) for child in children), timeout=30, interval=0.1)
    assert not identity.is_running()
    assert stop_tree(identity) is False  # reaped and gone: nothing left to signal


def test_a_child_in_its_own_session_is_stopped_too(started):
    """Flower's SuperLink starts its SuperExec with start_new_session: a killpg of the SuperLink's group misses it."""
    leader = started("sh", "-c", f"setsid sleep {LONG} & sleep {LONG} & wait")
    children = descendants(leader, 2)
    started.extra.extend(children)
    sessions = {os.getsid(child.pid) for child in children}
    assert len(sessions) == 2 and leader.pid in sessions  # one child escaped the leader's session

    assert stop_tree(ProcessIdentity.of(leader.pid), grace=30) is True

    leader.wait(timeout=30)
    wait_until(lambda: all(gone(child) for child in children), timeout=30, interval=0.1)


def test_sigkill_follows_when_sigterm_is_ignored_within_the_deadline(started):
    # Both children inherit the ignored SIGTERM; one of them lives in a session of its own.
    stubborn = started("sh", "-c", f"trap '' TERM; setsid sleep {LONG} & sleep {LONG} & wait")
    children = descendants(stubborn, 2)
    started.extra.extend(children)

    began = time.monotonic()
    assert stop_tree(ProcessIdentity.of(stubborn.pid), grace=1.0, kill_wait=5.0) is True
    took = time.monotonic() - began

    assert stubborn.wait(timeout=30) == -signal.SIGKILL  # killed, not terminated
    wait_until(lambda: all(gone(child) for child in children), timeout=30, interval=0.1)
    assert took < 1.0 + 5.0 + 2.0  # grace, the SIGKILL wait, and the polls' own time on a busy machine


def test_a_tracked_tree_is_stopped_after_its_root_died(started):
    """A child in another session is orphaned when its parent dies: it is found because it was tracked before."""
    root = started("sh", "-c", f"setsid sleep {LONG} & wait")
    (child,) = descendants(root, 1)
    started.extra.append(child)
    tree = ProcessTree(ProcessIdentity.of(root.pid))
    assert tree.track() is True

    os.kill(root.pid, signal.SIGKILL)  # the root crashes ...
    root.wait(timeout=30)  # ... and is reaped: its orphaned child is nobody's descendant any more
    assert child.is_running() and child.ppid() != root.pid

    assert tree.stop(grace=30) is False  # the root was gone; its child was stopped all the same
    wait_until(lambda: gone(child), timeout=30, interval=0.1)


def test_a_process_born_during_the_stop_is_stopped_too(started, tmp_path):
    late_pid, ready = tmp_path / "late.pid", tmp_path / "ready"
    root = started(sys.executable, "-c", SPAWNS_ON_SIGTERM, str(late_pid), str(ready))
    wait_until(ready.exists, timeout=60, interval=0.05)

    assert stop_tree(ProcessIdentity.of(root.pid), grace=60) is True

    assert root.wait(timeout=30) == 0  # it ended by itself once its late child had been terminated
    late = int(late_pid.read_text())
    wait_until(lambda: gone(late), timeout=30, interval=0.1)


def test_a_reused_pid_is_never_signalled(started):
    """A state file recorded pid P at start time T; P now belongs to a process started at another time."""
    bystander = started("sh", "-c", f"sleep {LONG} & wait")
    (bystander_child,) = descendants(bystander, 1)
    actual = ProcessIdentity.of(bystander.pid)
    recorded = ProcessIdentity(bystander.pid, actual.create_time - 3600)  # the recorded process started an hour ago

    assert not recorded.is_running()
    assert recorded.holder() is None
    assert ProcessTree(recorded).track() is False
    assert stop_tree(recorded, grace=1.0) is False

    with pytest.raises(subprocess.TimeoutExpired):
        bystander.wait(timeout=2)  # still running: it was not signalled, nor was its child
    assert actual.is_running() and bystander_child.is_running()


def test_a_process_that_does_not_lead_its_session_is_not_signalled(tmp_path):
    """Its session and group are the test runner's: signalling them would stop the caller itself."""
    member = subprocess.Popen(["sleep", str(LONG)])  # same session as the test runner
    try:
        identity = ProcessIdentity.of(member.pid)
        assert identity.is_running()
        assert stop_tree(identity, grace=1.0) is False
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


def test_interrupts_are_ignored_during_a_cleanup_and_restored_after():
    previous = signal.getsignal(signal.SIGINT)
    with interrupts_ignored():
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C during the cleanup: no KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)  # nor does SIGTERM end the process
    assert signal.getsignal(signal.SIGINT) is previous
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler runs at the next bytecode; the sleep is never reached in full
