"""Start, watch and stop the Flower processes fedtune runs for an operator (SuperLink, SuperNode).

Each process runs in its own process group with its output appended to a log file, so that stopping it also stops
the children it spawned (ServerApp/ClientApp subprocesses) and nothing is left running behind a finished command.
A process is known by its :class:`ProcessIdentity` (pid and start time, read with psutil), and :func:`stop` checks
that identity before it sends any signal: a pid the kernel has since given to another process is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from common.errors import FederationError
from common.polling import WaitTimeout, wait_until


def flower_executable(name: str) -> str:
    """The Flower console script ``name`` from this environment (beside the running Python first)."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FederationError(f"cannot find `{name}`; is flwr installed in this environment?")
    return found


def flower_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment with this Python's scripts first on PATH.

    Flower processes spawn helpers by name (``flower-superexec``), which must come from the same installation even
    when its virtual environment is not activated.
    """
    env = {**os.environ, **(extra or {})}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def start(
    command: Sequence[str], *, log_file: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``command`` in a new process group, stdout and stderr appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        return subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=flower_environment(env),
            cwd=cwd,
            start_new_session=True,
        )


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as it was when recorded: its pid AND its start time, because a pid alone is reused.

    Once a process has ended, the kernel may give its pid to an unrelated process; signalling a recorded pid
    without checking who holds it now could stop someone else's work. Every signal :func:`stop` sends is preceded
    by this check.

    ``create_time`` is psutil's (seconds since the epoch). It is derived from the boot time, which follows the
    system clock, so two readings of one process can differ slightly after a clock adjustment: ``tolerance``
    absorbs that. A different process within the tolerance would need the recorded one to have lived less than
    ``tolerance`` seconds and its pid to be reused at once.
    """

    pid: int
    create_time: float
    tolerance: float = 1.0

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity:
        """The identity of the live process ``pid`` (FederationError if there is none)."""
        try:
            return cls(pid, psutil.Process(pid).create_time())
        except psutil.Error:
            raise FederationError(f"process {pid} is not running") from None

    def holder(self) -> psutil.Process | None:
        """The process holding the recorded pid if it is the recorded one (an unreaped zombie included), else None.

        While a process is held, even as a zombie, its pid and its process group id cannot be given to another.
        """
        try:
            process = psutil.Process(self.pid)
            return process if abs(process.create_time() - self.create_time) <= self.tolerance else None
        except psutil.Error:
            return None

    def is_running(self) -> bool:
        """True while the recorded process (not merely its pid) is alive; a zombie has ended."""
        process = self.holder()
        try:
            return process is not None and process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


def stop(identity: ProcessIdentity, *, grace: float = 10.0) -> bool:
    """Stop the process group that ``identity``'s process leads: SIGTERM, up to ``grace`` seconds, then SIGKILL.

    Nothing is signalled unless the recorded process still holds its pid (alive, or exited but not yet reaped by
    its parent) and leads its own group, as :func:`start` makes it; the wait ends as soon as every process of the
    group has ended. Returns True if the group was signalled, False if the recorded process was gone.
    """
    if identity.holder() is None:
        return False
    group = identity.pid  # start() puts each process in a new session: its group id is its pid
    try:
        if os.getpgid(identity.pid) != group:
            return False  # not a group leader: signalling "its group" could reach processes we never started
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return False
    try:
        wait_until(lambda: not _group_members(group), timeout=grace, interval=0.2)
    except WaitTimeout:
        # The group still has members, so its id cannot have been reused: the SIGKILL reaches only our processes.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    return True


def _group_members(group: int) -> list[psutil.Process]:
    """The live (non-zombie) processes of process group ``group``."""
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == group and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
    return members


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C for the duration, so cleanup (stopping child process groups) runs either way."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_flwr(args: Sequence[str], *, flwr_home: Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run a ``flwr`` CLI command against the connections in ``flwr_home``."""
    env = flower_environment({"FLWR_HOME": str(flwr_home)})
    try:
        return subprocess.run(
            [flower_executable("flwr"), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise FederationError(f"`flwr {' '.join(args[:2])}` did not answer within {timeout:g} s") from None
