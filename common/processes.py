"""Start, watch and stop the Flower processes fedtune runs for an operator (SuperLink, SuperNode).

Each process runs in its own process group with its output appended to a log file, so that stopping it also stops
the children it spawned (ServerApp/ClientApp subprocesses) and nothing is left running behind a finished command.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from common.errors import FederationError


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


def stop(pid: int, *, grace: float = 10.0) -> bool:
    """SIGTERM the process group of ``pid``, SIGKILL it after ``grace`` seconds; True if it was running."""
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return False
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            break
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    return True


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child: fall back to a signal probe
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


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


def toml_value(value: object) -> str:
    """One TOML value for Flower's ``key=value`` config strings (strings single-quoted, literal)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if "'" in text or "\n" in text:
        raise FederationError(f"cannot pass {text!r} in a Flower config string (it contains a quote or newline)")
    return f"'{text}'"
