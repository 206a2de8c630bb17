"""Helpers for tests that run real Flower processes: finding a CLI's descendants, naming them, killing them."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from pathlib import Path

import psutil

from common.polling import wait_until

#: How long a CLI may take to start its Flower processes on a busy 2-core machine.
START_TIMEOUT = 120.0


def free_port() -> int:
    """A TCP port nothing listens on now (bound and released at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fedtune(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.app", *args]


def descendants(pid: int) -> list[psutil.Process]:
    """The live descendants of ``pid`` now (none if it has ended)."""
    try:
        return [child for child in psutil.Process(pid).children(recursive=True) if running(child)]
    except psutil.Error:
        return []


def running(process: psutil.Process) -> bool:
    """True while the process runs (a zombie has ended; it only waits for its parent)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def names(processes: list[psutil.Process]) -> set[str]:
    """The programs the processes run: a Flower console script is named by its path (``python .../flwr-...``),
    since the kernel's process name is cut to 15 characters."""
    found = set()
    for process in processes:
        with contextlib.suppress(psutil.Error):
            found.update(Path(arg).name for arg in process.cmdline()[:2])
    return found


def wait_for_descendants(cli: subprocess.Popen[bytes], wanted: set[str], log: Path) -> list[psutil.Process]:
    """The CLI's live descendants, once processes of every name in ``wanted`` are among them."""

    def present() -> list[psutil.Process] | None:
        assert cli.poll() is None, log.read_text()[-3000:]
        tree = descendants(cli.pid)
        return tree if wanted <= names(tree) else None

    return wait_until(present, timeout=START_TIMEOUT, interval=0.1)


def kill_all(processes: list[psutil.Process]) -> None:
    """Kill the processes and their descendants (collected first: killing a parent orphans them)."""
    everyone = [*processes, *(child for parent in processes for child in descendants(parent.pid))]
    for process in everyone:
        if running(process):
            process.kill()
