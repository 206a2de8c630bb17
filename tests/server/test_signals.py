"""`fedtune server start` stopped by SIGTERM or Ctrl-C while its run waits for sites: it ends within a bounded time
and leaves no flower-superlink, flower-superexec or flwr-serverapp behind, although the SuperExec lives in a session
of its own (a killpg of the SuperLink's group would miss it and its ServerApp). Real Flower processes: slow."""

from __future__ import annotations

import os
import signal
import subprocess

import psutil
import pytest

from server.superlink import KILL_WAIT, SERVER_STATE, STOP_GRACE
from tests.processes import descendants, fedtune, free_port, names, running, wait_for_descendants

pytestmark = pytest.mark.slow

#: The SuperLink's grace and SIGKILL wait, plus the interpreter's exit and the polls on a busy 2-core machine.
EXIT_DEADLINE = STOP_GRACE + KILL_WAIT + 5.0
FLOWER = {"flower-superlink", "flower-superexec", "flwr-serverapp"}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_during_a_run_leaves_no_flower_process(tiny_model_dir, tmp_path, cleanup, signum):
    out, log = tmp_path / "run", tmp_path / "server.out"
    command = fedtune(
        *("server", "start", "--insecure", "--out", str(out), "--port", str(free_port())),
        *("--labels", "a,b", "--model", str(tiny_model_dir), "--rounds", "1"),
    )
    with log.open("wb") as printed:
        cli = subprocess.Popen(command, stdout=printed, stderr=subprocess.STDOUT)
    cleanup.append(psutil.Process(cli.pid))
    # The run is submitted and its ServerApp waits for sites; collected before the signal, while all are descendants.
    started = wait_for_descendants(cli, FLOWER, log)
    cleanup.extend(started)
    session_leaders = [process for process in started if _session(process) == process.pid]
    assert {"flower-superlink", "flower-superexec"} <= names(session_leaders)  # each in a session of its own

    cli.send_signal(signum)
    try:
        cli.wait(timeout=EXIT_DEADLINE)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {EXIT_DEADLINE:g} s after the signal:\n{log.read_text()[-3000:]}")

    assert cli.returncode == 130, log.read_text()[-3000:]
    left = [process for process in started if running(process)]
    assert not left, names(left)
    assert not descendants(cli.pid)
    assert not (out / SERVER_STATE).exists()


def _session(process: psutil.Process) -> int:
    try:
        return os.getsid(process.pid)
    except OSError:
        return -1
