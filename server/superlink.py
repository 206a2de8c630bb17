"""The SuperLink process: its command line, starting it, waiting until it serves, its state file, stopping it.

A SuperLink started for a run directory ``OUT`` is recorded in ``OUT/server.json``: its pid AND its start time
(:class:`common.processes.ProcessIdentity`), so that ``fedtune server stop`` and the "already running" preflight
check act on that process only, never on an unrelated one that was later given the same pid. State files written
before the start time was recorded (no ``superlink_create_time``) are still read: their ``started_at``, taken just
after the process started, stands in with a few seconds' tolerance.

Stopping a SuperLink stops its whole process tree (:class:`common.processes.ProcessTree`): its SuperExec starts in
a session of its own and runs each ``flwr-serverapp``, so neither is in the SuperLink's process group. The tree is
tracked on every look at the SuperLink, so those helpers are found even after the SuperLink has died.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.certs.authority import FederationCerts
from common.certs.checks import tls_handshake
from common.errors import FederationError
from common.fileio import atomic_write_json
from common.polling import WaitTimeout, wait_until
from common.processes import (
    ProcessIdentity,
    ProcessTree,
    flower_executable,
    interrupts_ignored,
    start,
    stop_tree,
)

SERVER_STATE = "server.json"
LOG_FILE = "superlink.log"
DATABASE = "superlink.db"
#: How long a starting SuperLink may take to accept connections.
READY_TIMEOUT = 60.0
#: How far a legacy state file's ``started_at`` may be from the process's start time.
LEGACY_TOLERANCE = 5.0
#: Seconds the SuperLink, its SuperExec and ServerApp get to end after SIGTERM (the SuperLink took 0.5-3 s here: its
#: HTTP server's shutdown and Flower's exit handlers), then the longest wait after SIGKILL.
STOP_GRACE = 3.0
KILL_WAIT = 2.0


def superlink_command(*, host: str, port: int, out: Path, certs: FederationCerts | None) -> list[str]:
    """The flower-superlink command line: TLS and SuperNode authentication, or plaintext when ``certs`` is None.

    Runtime dependency installation is disabled (it would install the app's dependencies from the index for every
    run); the state database lives in the run directory ``out``.
    """
    command = [
        flower_executable("flower-superlink"),
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        str(out / DATABASE),
        "--disable-runtime-dependency-installation",
    ]
    if certs is None:
        return [*command, "--insecure"]
    return [
        *command,
        "--ssl-ca-certfile",
        str(certs.ca_cert),
        "--ssl-certfile",
        str(certs.server_cert),
        "--ssl-keyfile",
        str(certs.server_key),
        "--enable-supernode-auth",
    ]


@dataclass(frozen=True)
class SuperLink:
    """A SuperLink this process started, recorded in ``out/server.json`` until it is stopped."""

    process: subprocess.Popen[bytes]
    identity: ProcessIdentity
    out: Path
    tree: ProcessTree

    @classmethod
    def start(cls, command: Sequence[str], *, out: Path, address: str) -> SuperLink:
        """Start the SuperLink (its own session, output to ``out/superlink.log``) and record it.

        Call it where SIGTERM is already an interrupt (:func:`common.processes.sigterm_as_interrupt`): if anything
        interrupts the recording, the SuperLink is stopped before the exception leaves.
        """
        process = start(command, log_file=out / LOG_FILE, cwd=out)
        try:
            identity = ProcessIdentity.of(process.pid)
            atomic_write_json(
                out / SERVER_STATE,
                {
                    "superlink_pid": identity.pid,
                    "superlink_create_time": identity.create_time,
                    "address": address,
                    "started_at": time.time(),
                },
            )
        except BaseException:  # not recorded yet: nobody else could stop it
            with interrupts_ignored():
                stop_tree(ProcessIdentity.of(process.pid), grace=STOP_GRACE, kill_wait=KILL_WAIT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=KILL_WAIT)
                (out / SERVER_STATE).unlink(missing_ok=True)
            raise
        return cls(process, identity, out, ProcessTree(identity))

    @property
    def log_file(self) -> Path:
        """Where the SuperLink's output goes."""
        return self.out / LOG_FILE

    def check_alive(self) -> None:
        """FederationError if the SuperLink has exited (the run cannot go on without it)."""
        self.tree.track()  # before poll() reaps it: its session finds what it left behind until then
        code = self.process.poll()
        if code is not None:
            raise FederationError(f"the SuperLink exited (code {code}); see {self.log_file}")

    def wait_ready(self, host: str, port: int, *, ca: Path | None, timeout: float = READY_TIMEOUT) -> None:
        """Wait until the SuperLink accepts connections on ``host:port``.

        With a ``ca``, accepting means a TLS handshake that verifies against it; with None, a TCP connection.
        FederationError if the SuperLink exits, or is not serving within ``timeout`` seconds.
        """

        def serving() -> bool:
            self.tree.track()
            if self.process.poll() is not None:
                raise FederationError(self._not_started())
            if ca is None:
                socket.create_connection((host, port), timeout=2).close()
            else:
                tls_handshake(f"{host}:{port}", ca, timeout=2)
            return True

        try:
            wait_until(serving, timeout=timeout, interval=0.5, retry_on=(OSError,))
        except WaitTimeout:
            raise FederationError(self._not_started()) from None

    def stop(self) -> None:
        """Stop the SuperLink and every process it started (SuperExec, ServerApps), then remove its state file.

        Ends within about ``STOP_GRACE + 2 * KILL_WAIT`` seconds; the SuperLink is reaped (unless it survived
        SIGKILL).
        """
        self.tree.stop(grace=STOP_GRACE, kill_wait=KILL_WAIT)
        with contextlib.suppress(subprocess.TimeoutExpired):  # only if it survived SIGKILL (logged)
            self.process.wait(timeout=KILL_WAIT)
        (self.out / SERVER_STATE).unlink(missing_ok=True)

    def _not_started(self) -> str:
        return f"the SuperLink did not start (exit code {self.process.poll()}); see {self.log_file}"


def recorded_superlink(out: Path) -> ProcessIdentity | None:
    """The SuperLink process ``out/server.json`` records (None if there is no such file or it names no pid)."""
    state = out / SERVER_STATE
    if not state.exists():
        return None
    try:
        recorded = json.loads(state.read_text())
        pid = recorded.get("superlink_pid")
        if not isinstance(pid, int):
            return None
        if "superlink_create_time" in recorded:
            return ProcessIdentity(pid, float(recorded["superlink_create_time"]))
        return ProcessIdentity(pid, float(recorded["started_at"]), tolerance=LEGACY_TOLERANCE)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FederationError(f"{state}: not a SuperLink state file ({exc}); remove it if no SuperLink runs") from None


def superlink_running(out: Path) -> bool:
    """True while the SuperLink recorded for ``out`` is alive (a reused pid does not count)."""
    identity = recorded_superlink(out)
    return identity is not None and identity.is_running()


def stop_server(out: Path) -> bool:
    """Stop the SuperLink a detached ``server start`` left running for ``out``; False if none was running.

    Every process it has started by now goes with it (:func:`common.processes.stop_tree`). The recorded process is
    signalled only if it still holds its pid; the state file is removed either way.
    """
    identity = recorded_superlink(out)
    if identity is None:
        return False
    stopped = stop_tree(identity, grace=STOP_GRACE, kill_wait=KILL_WAIT)
    (out / SERVER_STATE).unlink(missing_ok=True)
    return stopped
