"""Start, watch and stop the Flower processes fedtune runs for an operator (SuperLink, SuperNode).

Each process runs in a new session (its own process group) with its output appended to a log file. Stopping it
stops its whole :class:`ProcessTree`: every process descending from it, including those that left its group and
session (the SuperLink's SuperExec and ServerApps), so nothing is left running behind a finished or interrupted
command. A process is known by its :class:`ProcessIdentity` (pid and start time, read with psutil), and nothing is
signalled unless that identity still holds: a pid the kernel has since given to another process is never signalled.

The process trees fedtune runs (observed with Flower 1.41 on Linux):

* ``client start``: ``flower-supernode`` (new session S) -> ``flower-superexec`` (session S) -> one
  ``flwr-clientapp`` per task (session S);
* ``server start``: ``flower-superlink`` (new session L) -> ``flower-superexec`` (its OWN new session E) -> one
  ``flwr-serverapp`` per run (session E); the ``flwr`` CLI calls run in the caller's own group (and end with it:
  ``subprocess.run`` kills its child when interrupted).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from common.errors import FederationError
from common.polling import WaitTimeout, wait_until

log = logging.getLogger(__name__)


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
    """The current environment with this Python's scripts first on PATH, and Flower's telemetry off.

    Flower processes spawn helpers by name (``flower-superexec``), which must come from the same installation even
    when its virtual environment is not activated. Flower reports usage events to its developers by default; a
    privacy tool's processes do not phone home (an operator who wants it sets ``FLWR_TELEMETRY_ENABLED`` itself).
    """
    env = {"FLWR_TELEMETRY_ENABLED": "0", **os.environ, **(extra or {})}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def start(
    command: Sequence[str], *, log_file: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``command`` in a new session (its own process group), stdout and stderr appended to ``log_file``.

    Leading its own session is what :class:`ProcessTree` requires before it signals anyone.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as output:
        return subprocess.Popen(
            list(command),
            stdout=output,
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


#: How often a stopping tree is looked at again (ended members, children born since the last look).
STOP_POLL = 0.1


class ProcessTree:
    """A process fedtune started (the *root*) and every process descending from it, wherever those now live.

    Flower's processes leave their parent's process group: the SuperLink starts its SuperExec with
    ``start_new_session``, and that SuperExec starts each ``flwr-serverapp``; a ``killpg`` of the SuperLink's group
    misses both. A process whose parent has ended is re-parented (to init) and is nobody's descendant any more, so the
    tree is *tracked*: :meth:`track` records the root's current descendants (and every process of the root's
    session), and the caller calls it while the tree runs (on each look at the root) and :meth:`stop` calls it
    before, and while, it signals anyone. A process born and orphaned between two looks can still escape; none of
    Flower's does (each helper's parent outlives it).

    Invariants:

    * members are only the root (while it holds its pid: :meth:`ProcessIdentity.holder`), processes whose parent was
      a live member when looked at, and processes of the root's session while the root holds its pid (its session
      id cannot be given to another process before);
    * a root that does not lead its own session (as :func:`start` makes it) gets no members and is never
      signalled: its session or group could hold processes fedtune never started (the caller itself);
    * members are psutil processes, which remember their start time: psutil refuses to signal a member whose pid
      has since passed to another process, so only processes of this tree are ever signalled;
    * the calling process is never a member.
    """

    def __init__(self, identity: ProcessIdentity) -> None:
        self.identity = identity
        self._members: set[psutil.Process] = set()

    def track(self) -> bool:
        """Add the root's current descendants and session to the members; False if the root is not held now."""
        root = self.identity.holder()
        try:
            if root is None or os.getsid(root.pid) != root.pid:
                return False
        except OSError:
            return False
        table = []  # every process with its parent and session, read BEFORE deciding which members are alive
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                table.append((process, process.ppid(), os.getsid(process.pid)))
        if not root.is_running():  # reaped (or reused) while the table was read: its session id may be reused
            return False
        self._members.add(root)
        parents = {member.pid for member in self._members if member.is_running()}
        grown = True
        while grown:
            grown = False
            for process, parent, session in table:
                if process not in self._members and (parent in parents or session == root.pid):
                    self._members.add(process)
                    parents.add(process.pid)
                    grown = True
        self._members.discard(psutil.Process())
        return True

    def alive(self) -> list[psutil.Process]:
        """The members still running (a zombie has ended: it only waits for its parent to read its status)."""
        return [member for member in self._members if _running(member)]

    def stop(self, *, grace: float, kill_wait: float = 2.0) -> bool:
        """Stop every member: SIGTERM all at once, up to ``grace`` seconds, then SIGKILL those left.

        Returns within about ``grace + kill_wait`` seconds. Children born during the wait are tracked and signalled
        too; before SIGKILL every member is frozen (SIGSTOP) so that none can start another process meanwhile.
        A member still running ``kill_wait`` seconds after SIGKILL (stuck in the kernel) is logged. Returns True if
        the root still held its pid (running, or exited but not yet reaped), False if it was gone.
        """
        rooted = self.track()
        terminated: set[psutil.Process] = set()

        def all_ended() -> bool:
            self.track()
            alive = self.alive()
            _send(set(alive) - terminated, signal.SIGTERM)
            terminated.update(alive)
            return not alive

        try:
            wait_until(all_ended, timeout=grace, interval=STOP_POLL)
        except WaitTimeout:
            self._kill()
            with contextlib.suppress(WaitTimeout):
                wait_until(lambda: not self.alive(), timeout=kill_wait, interval=STOP_POLL / 2)
            for member in self.alive():
                log.warning("process %s (%s) survived SIGKILL", member.pid, _name(member))
        return rooted

    def _kill(self) -> None:
        """Freeze the members until no new one appears, then SIGKILL them all (a frozen process cannot fork)."""
        frozen: set[psutil.Process] = set()
        for _ in range(10):  # each round freezes what the previous one found; Flower's trees are 4 levels deep
            alive = set(self.alive())
            if alive <= frozen:
                break
            _send(alive - frozen, signal.SIGSTOP)
            frozen |= alive
            self.track()
        _send(set(self.alive()) | frozen, signal.SIGKILL)


def stop_tree(identity: ProcessIdentity, *, grace: float = 10.0, kill_wait: float = 2.0) -> bool:
    """Stop ``identity``'s process and every process descending from it (:meth:`ProcessTree.stop`).

    For a process found after the fact (a state file's record): its descendants are those it has now. A caller
    that ran the process should keep a :class:`ProcessTree` and track it while it runs instead.
    """
    return ProcessTree(identity).stop(grace=grace, kill_wait=kill_wait)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _send(processes: set[psutil.Process], signum: int) -> None:
    """Signal each process; psutil checks first that its pid still belongs to it (NoSuchProcess otherwise)."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signum)


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.Error:
        return "?"


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C for the duration, so cleanup (stopping child process trees) runs either way.

    Enter it BEFORE starting a child: a SIGTERM that arrives between the start and the handler would end this
    process at once and leave the child running. Main thread only (``signal.signal``).
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def interrupts_ignored() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM for the duration: for a bounded cleanup that must not be cut short.

    An impatient second Ctrl-C would otherwise raise inside the stop of a process tree and leave part of it
    running. The cleanup this guards ends within its own deadline, so the signal loses nothing by being dropped:
    the interrupted command is already on its way out. Start no process inside it: a child would inherit the
    ignored signals. Outside the main thread (where handlers cannot be set) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_flwr(args: Sequence[str], *, flwr_home: Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run a ``flwr`` CLI command against the connections in ``flwr_home``."""
    env = flower_environment({"FLWR_HOME": str(flwr_home)})
    try:
        return subprocess.run(
            [flower_executable("flwr"), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise FederationError(f"`flwr {' '.join(args[:2])}` did not answer within {timeout:g} s") from None
