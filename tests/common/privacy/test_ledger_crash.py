"""kill -9 at random points: after a restart the ledger still says at least what was really spent."""

from __future__ import annotations

import os
import random
import select
import signal
import time
from pathlib import Path

from common.privacy.accountant import get_accountant
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import DatasetRef, PrivacyLedger

DATA = DatasetRef(fingerprint="d" * 64, dataset_id="crash.jsonl", num_examples=10_000)
EVENT = DpSgdEvent(noise_multiplier=2.0, sample_rate=0.01, steps=10, max_grad_norm=1.0)
KILLS = 24


def _worker(path: Path, out_fd: int, seed: int) -> None:
    """A training loop: reserve (durable) -> report -> 'train' -> commit -> report. Never returns normally."""
    rng = random.Random(seed)
    ledger = PrivacyLedger(path)
    for rnd in range(10_000):
        reservation = ledger.reserve(
            dataset=DATA, event=EVENT, delta=1e-5, limit=1e6, accountant="rdp", run_id=f"run-{seed}", round=rnd
        )
        os.write(out_fd, f"R {reservation.event_id}\n".encode())
        time.sleep(rng.uniform(0.0, 0.04))  # local training happens here
        ledger.commit(reservation)
        os.write(out_fd, f"C {reservation.event_id}\n".encode())


def _run_and_kill(path: Path, seed: int, run_for: float) -> list[tuple[str, str]]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the training subprocess
        os.close(read_fd)
        try:
            _worker(path, write_fd, seed)
        finally:
            os._exit(1)
    os.close(write_fd)
    buffer = b""
    deadline = time.monotonic() + run_for
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([read_fd], [], [], left)
        if ready:
            buffer += os.read(read_fd, 65536)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    while chunk := os.read(read_fd, 65536):  # whatever it reported before dying
        buffer += chunk
    os.close(read_fd)
    return [tuple(line.split(" ", 1)) for line in buffer.decode().splitlines()]  # type: ignore[misc]


def test_kill_minus_nine_never_loses_spend(tmp_path):
    path = tmp_path / "ledger.jsonl"
    rng = random.Random(20261122)
    accountant = get_accountant("rdp")
    accountant.epsilon([EVENT], delta=1e-5)  # import the accountant's libraries once, before forking
    reported_reserved: list[str] = []
    killed_between_reserve_and_commit = 0
    for point in range(KILLS):
        spent_before = PrivacyLedger(path).spent(DATA.fingerprint, delta=1e-5, accountant="rdp")
        messages = _run_and_kill(path, seed=point, run_for=rng.uniform(0.02, 0.5))
        reserved = [event_id for kind, event_id in messages if kind == "R"]
        committed = {event_id for kind, event_id in messages if kind == "C"}
        reported_reserved += reserved
        if reserved and reserved[-1] not in committed:
            killed_between_reserve_and_commit += 1

        # "Restart": a fresh ledger object reads and fully verifies the file the killed process left.
        snapshot = PrivacyLedger(path).snapshot()
        on_disk = {r.event_id for r in snapshot.reservations(DATA.fingerprint)}
        assert set(reported_reserved) <= on_disk, "a reservation the process had reported is missing"
        assert committed <= snapshot.committed
        spent_after = PrivacyLedger(path).spent(DATA.fingerprint, delta=1e-5, accountant="rdp")
        at_least = accountant.epsilon([EVENT] * len(reported_reserved), delta=1e-5)
        assert spent_after >= spent_before
        assert spent_after >= at_least - 1e-12
    assert len(reported_reserved) > KILLS
    assert killed_between_reserve_and_commit >= 5, killed_between_reserve_and_commit
