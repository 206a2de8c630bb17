"""kill -9 at every durable step of a reserve and a commit: after a restart the ledger verifies, says at least what
was really spent, and never loses a committed event.

The worker (a forked child) reports its own progress: in the worker only, the storage layer's atomic write (of the
ledger, then of its head anchor) and the rename inside it are wrapped to send a marker naming the step and the file,
then to wait for the parent's go-ahead. The parent SIGKILLs the worker at the chosen marker. Every kill point is hit
exactly, on every run, however busy the machine: nothing depends on wall-clock time (timeouts are safety nets only).
A kill -9 is not a power cut: bytes already written survive it whether or not they were fsynced, so the fsyncs are
not kill points of their own.
"""

from __future__ import annotations

import os
import select
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.privacy.accountant import get_accountant
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import PrivacyLedger
from common.privacy.storage import head_path, read_head
from tests.helpers import synthetic_dataset

DATA = synthetic_dataset("crash.jsonl", 10_000, tag="d")
EVENT = DpSgdEvent(noise_multiplier=2.0, sample_rate=0.01, steps=10, max_grad_norm=1.0)
OPS = ("reserve", "commit", "reserve", "commit")  # two rounds; the first reserve creates the ledger
WRITE_STEPS = ("begin", "rename", "renamed", "done")  # before the write; temp complete; renamed; durable
SAFETY_TIMEOUT = 120.0  # seconds a worker may take to reach its next marker before the test fails
#: The anchor's seq after the n-th anchor write: the new ledger's header alone (0), then the first reserve (written
#: with the upgrade and the record set: seq 3), its commit, the second reserve and commit.
ANCHOR_SEQ = (None, 0, 3, 4, 5, 6)


def write_markers() -> list[str]:
    return [f"{step} {file}" for file in ("ledger", "head") for step in WRITE_STEPS]


def op_markers(index: int, op: str) -> list[str]:
    creation = write_markers() if index == 0 else []  # a new ledger is its header alone, anchored, first
    return [*creation, *write_markers(), "reserved" if op == "reserve" else "committed"]


def expected_markers() -> list[str]:
    return [marker for i, op in enumerate(OPS) for marker in op_markers(i, op)]


def kill_point_ids() -> list[str]:
    return [f"op{i + 1}-{op}:{n}:{marker}" for i, op in enumerate(OPS) for n, marker in enumerate(op_markers(i, op))]


def _worker(path: Path, report_fd: int, go_fd: int) -> None:
    """Run OPS, stopping at every durable step to report it and wait for the parent (which may kill instead)."""
    import common.privacy.storage as storage

    def step(marker: str) -> None:
        os.write(report_fd, (marker + "\n").encode())
        if os.read(go_fd, 1) != b"g":  # the parent closed the pipe: it is gone, stop here
            os._exit(3)

    def file_name(target: str | os.PathLike[str]) -> str:
        return {str(path): "ledger", str(head_path(path)): "head"}.get(os.fspath(target), f"other:{target}")

    write, replace = storage.atomic_write_bytes, os.replace

    def reporting_write(target: Path, data: bytes, **kwargs: int) -> None:
        step(f"begin {file_name(target)}")
        write(target, data, **kwargs)
        step(f"done {file_name(target)}")

    def reporting_replace(source: str, target: str) -> None:
        step(f"rename {file_name(target)}")
        replace(source, target)
        step(f"renamed {file_name(target)}")

    storage.atomic_write_bytes = reporting_write  # type: ignore[assignment]
    os.replace = reporting_replace  # type: ignore[assignment]
    ledger = PrivacyLedger(path, lock_timeout=SAFETY_TIMEOUT)
    reservation = None
    for rnd, op in enumerate(OPS):
        if op == "reserve":
            reservation = ledger.reserve(
                dataset=DATA, event=EVENT, delta=1e-5, limit=1e6, accountant="rdp", run_id="run", round=rnd // 2
            )
            step("reserved")
        else:
            assert reservation is not None
            ledger.commit(reservation, examples_seen=100)
            step("committed")


@dataclass
class Killed:
    markers: list[str]  # every marker the worker reported, the last one being where it was killed (if it was)
    status: int


def run_worker(path: Path, kill_at: int | None) -> Killed:
    """Fork a worker on ``path``; let it pass every marker but number ``kill_at``, where it is SIGKILLed."""
    report_read, report_write = os.pipe()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: never returns into pytest
        code = 0
        try:
            os.close(report_read)
            os.close(go_write)
            _worker(path, report_write, go_read)
        except BaseException as exc:
            os.write(report_write, f"error {exc!r}\n".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(report_write)
    os.close(go_read)
    markers: list[str] = []
    buffer = b""
    try:
        while True:
            ready, _, _ = select.select([report_read], [], [], SAFETY_TIMEOUT)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"the worker reported nothing for {SAFETY_TIMEOUT} s after {markers}")
            chunk = os.read(report_read, 4096)
            if not chunk:
                break  # the worker exited
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                markers.append(line.decode())
                if markers[-1].startswith("error"):
                    pytest.fail(f"the worker failed: {markers[-1]}")
                if len(markers) - 1 == kill_at:
                    os.kill(pid, signal.SIGKILL)  # it is blocked waiting for the go-ahead: it dies exactly here
                else:
                    os.write(go_write, b"g")
    finally:
        os.close(go_write)  # a worker still waiting for a go-ahead reads end-of-file and exits
        _, status = os.waitpid(pid, 0)
        os.close(report_read)
    return Killed(markers=markers, status=status)


def rdp_epsilon(reservations: int) -> float:
    return get_accountant("rdp").epsilon([EVENT] * reservations, delta=1e-5)


@pytest.fixture(scope="module")
def all_markers(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    for n in range(len(OPS) + 1):
        rdp_epsilon(n)  # import the accountant's libraries once, before forking (and memoise the figures)
    run = run_worker(tmp_path_factory.mktemp("full") / "ledger.jsonl", kill_at=None)
    assert os.WIFEXITED(run.status) and os.WEXITSTATUS(run.status) == 0, run
    return run.markers


def test_the_worker_reports_every_durable_step_in_order(all_markers):
    # The ledger file is durable before the head anchor is written, and both before reserve/commit return.
    assert all_markers == expected_markers()


@pytest.mark.parametrize("kill_at", range(len(expected_markers())), ids=kill_point_ids())
def test_kill_minus_nine_at_every_step_never_loses_spend(tmp_path, all_markers, kill_at):
    path = tmp_path / "ledger.jsonl"
    run = run_worker(path, kill_at=kill_at)
    assert os.WIFSIGNALED(run.status) and os.WTERMSIG(run.status) == signal.SIGKILL
    assert run.markers == all_markers[: kill_at + 1]
    killed_at = run.markers[-1]

    # Exactly the writes whose rename happened are on disk: op i's record iff its ledger rename completed (the first
    # ledger rename is the new ledger's header alone).
    landed = max(0, run.markers.count("renamed ledger") - 1)
    expect_reserved = OPS[:landed].count("reserve")
    expect_committed = OPS[:landed].count("commit")
    if killed_at.startswith("rename "):  # temp file complete, rename not done: a stale temp file is left behind
        assert list(tmp_path.glob(".ledger.jsonl.*.tmp")), "expected the killed writer's temp file"

    # "Restart": a fresh ledger object reads and fully verifies what the killed process left.
    if run.markers.count("renamed ledger") == 0:
        assert not path.exists() and not head_path(path).exists()
    snapshot = PrivacyLedger(path).snapshot()
    reservations = snapshot.reservations(DATA.fingerprint)
    assert len(reservations) == expect_reserved and len(snapshot.committed) == expect_committed
    reported_reserved = run.markers.count("reserved")
    assert len(reservations) >= reported_reserved  # a reservation the worker saw returned is never lost
    assert len(snapshot.committed) >= run.markers.count("committed")  # nor is a commit
    spent = PrivacyLedger(path).spent(DATA, delta=1e-5, accountant="rdp")
    assert spent == pytest.approx(rdp_epsilon(expect_reserved), rel=1e-12)  # reserved without commit counts
    assert spent >= rdp_epsilon(reported_reserved)
    head = read_head(path)
    # The anchor names the last write whose anchor rename completed (trailing the ledger by at most one write).
    assert (head.seq if head else None) == ANCHOR_SEQ[run.markers.count("renamed head")]

    # The site carries on: the next round reserves and commits on top, the stale temp file is cleaned up.
    ledger = PrivacyLedger(path, lock_timeout=SAFETY_TIMEOUT)
    reservation = ledger.reserve(dataset=DATA, event=EVENT, delta=1e-5, limit=1e6, accountant="rdp", run_id="next")
    ledger.commit(reservation)
    after = PrivacyLedger(path).snapshot()
    assert len(after.reservations()) == expect_reserved + 1 and len(after.committed) == expect_committed + 1
    assert read_head(path) is not None and read_head(path).seq == after.records[-1].seq  # type: ignore[union-attr]
    assert not list(tmp_path.glob(".ledger.jsonl*.tmp"))
