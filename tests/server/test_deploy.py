"""The coordinator: preflight (certificates, enrolled keys, no SuperLink of the directory still running), the
SuperLink's state file (a reused pid is never stopped), and following a run through its round log."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import psutil
import pytest

from common.certs.authority import init_federation
from common.certs.node_keys import create_node_key
from common.errors import CertificateError, ConfigError, FederationError
from common.federation.config import FederationConfig
from common.federation.rounds import RoundRecord
from common.polling import wait_until
from server.deploy import ServerLaunch, preflight
from server.follow import follow_run
from server.identities import SiteKey
from server.round_log import RoundLog
from server.superlink import SERVER_STATE, SuperLink, stop_server, superlink_running


@pytest.fixture
def setup(tmp_path):
    certs = init_federation(tmp_path / "certs")
    _, pub_a = create_node_key(tmp_path / "keys", "a")
    _, pub_b = create_node_key(tmp_path / "keys", "b")
    config = FederationConfig(labels=("n", "p"), out_dir=str(tmp_path / "run"))
    return certs, (SiteKey("hospital-a", pub_a), SiteKey.parse(str(pub_b))), config


def test_valid_setup_passes_and_enables_tls_and_node_auth(setup, tmp_path):
    certs, keys, config = setup
    launch = ServerLaunch(out=tmp_path / "run", certs=certs.directory, enroll=keys)
    preflight(launch, config)
    command = launch.superlink_command()
    assert "--enable-supernode-auth" in command and "--ssl-certfile" in command and "--insecure" not in command
    assert "--disable-runtime-dependency-installation" in command


def test_a_relative_certs_directory_reaches_the_superlink_as_absolute_paths(setup, tmp_path, monkeypatch):
    """The SuperLink runs in the run directory: ``--certs certs`` (relative, as the README writes it) must still
    name the files there."""
    certs, keys, _ = setup
    monkeypatch.chdir(certs.directory.parent)
    command = ServerLaunch(out=tmp_path / "run", certs=Path(certs.directory.name), enroll=keys).superlink_command()
    files = [command[command.index(flag) + 1] for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile")]
    assert all(Path(name).is_absolute() and Path(name).is_file() for name in files), files


def test_tls_is_the_default(setup, tmp_path):
    _, keys, config = setup
    with pytest.raises(ConfigError, match="TLS is on by default"):
        preflight(ServerLaunch(out=tmp_path / "run", certs=None, enroll=keys), config)


def test_insecure_cannot_enroll(setup, tmp_path):
    _, keys, config = setup
    with pytest.raises(ConfigError, match="--enroll needs TLS"):
        preflight(ServerLaunch(out=tmp_path / "run", certs=None, enroll=keys, insecure=True), config)


def test_bad_enrolled_key_and_too_few_sites(setup, tmp_path):
    certs, keys, config = setup
    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-rsa AAAA nonsense\n")
    with pytest.raises(CertificateError, match=r"bad\.pub"):
        preflight(
            ServerLaunch(out=tmp_path / "run", certs=certs.directory, enroll=(keys[0], SiteKey("x", bad))), config
        )
    with pytest.raises(ConfigError, match="cannot satisfy --min-sites 2"):
        preflight(ServerLaunch(out=tmp_path / "run", certs=certs.directory, enroll=keys[:1]), config)


def test_a_site_name_or_key_enrolled_twice_stops_the_start(setup, tmp_path):
    certs, keys, config = setup
    twice = (keys[0], SiteKey("hospital-a", keys[1].public_key))
    with pytest.raises(ConfigError, match="the name 'hospital-a' is given to"):
        preflight(ServerLaunch(out=tmp_path / "run", certs=certs.directory, enroll=twice), config)
    same_key = (keys[0], SiteKey("other", keys[0].public_key))
    with pytest.raises(ConfigError, match="already enrolled as 'hospital-a'"):
        preflight(ServerLaunch(out=tmp_path / "run", certs=certs.directory, enroll=same_key), config)


def test_certificate_problems_stop_the_start(setup, tmp_path):
    certs, keys, config = setup
    certs.server_key.chmod(0o644)
    with pytest.raises(CertificateError, match="readable by others"):
        preflight(ServerLaunch(out=tmp_path / "run", certs=certs.directory, enroll=keys), config)


def test_plaintext_superlink_has_no_tls_and_no_node_auth(setup, tmp_path):
    command = ServerLaunch(out=tmp_path / "run", certs=None, enroll=(), insecure=True).superlink_command()
    assert "--insecure" in command
    assert "--enable-supernode-auth" not in command and "--ssl-certfile" not in command


# --- the SuperLink's state file: a recorded process is stopped only while it is still that process ------------


@pytest.fixture
def stand_in(tmp_path):
    """A long-running process standing in for a SuperLink, recorded in ``tmp_path/run/server.json``."""
    out = tmp_path / "run"
    out.mkdir()
    superlink = SuperLink.start(["sleep", "300"], out=out, address="127.0.0.1:9093")
    yield superlink
    if superlink.process.poll() is None:
        superlink.process.kill()
        superlink.process.wait(timeout=30)


def test_state_records_pid_and_start_time_and_stop_ends_it(stand_in):
    state = json.loads((stand_in.out / SERVER_STATE).read_text())
    assert state["superlink_pid"] == stand_in.process.pid
    assert state["superlink_create_time"] == pytest.approx(psutil.Process(stand_in.process.pid).create_time(), abs=0.5)
    assert superlink_running(stand_in.out)

    assert stop_server(stand_in.out) is True
    assert stand_in.process.wait(timeout=30) is not None
    assert not (stand_in.out / SERVER_STATE).exists()
    assert stop_server(stand_in.out) is False  # nothing recorded any more


def test_a_reused_pid_is_not_stopped_and_does_not_block_a_new_start(stand_in, setup):
    """server.json names a pid that now belongs to another process (it started at another time)."""
    _, _, config = setup
    state = stand_in.out / SERVER_STATE
    recorded = json.loads(state.read_text())
    state.write_text(json.dumps({**recorded, "superlink_create_time": recorded["superlink_create_time"] - 3600}))

    assert not superlink_running(stand_in.out)
    preflight(ServerLaunch(out=stand_in.out, certs=None, enroll=(), insecure=True), config)  # no "still running"
    assert stop_server(stand_in.out) is False
    with pytest.raises(subprocess.TimeoutExpired):
        stand_in.process.wait(timeout=2)  # the other process was not signalled
    assert not state.exists()


def test_a_running_superlink_blocks_a_second_start(stand_in, setup):
    _, _, config = setup
    with pytest.raises(FederationError, match="still running"):
        preflight(ServerLaunch(out=stand_in.out, certs=None, enroll=(), insecure=True), config)


def test_state_files_without_a_start_time_still_work(stand_in):
    """Files written before the start time was recorded carry ``started_at`` (taken just after the start)."""
    state = stand_in.out / SERVER_STATE
    recorded = json.loads(state.read_text())
    legacy = {"superlink_pid": recorded["superlink_pid"], "address": recorded["address"]}
    state.write_text(json.dumps({**legacy, "started_at": recorded["superlink_create_time"] - 7200}))
    assert not superlink_running(stand_in.out)  # started two hours before this process: not it
    state.write_text(json.dumps({**legacy, "started_at": recorded["started_at"]}))
    assert superlink_running(stand_in.out)
    assert stop_server(stand_in.out) is True
    assert stand_in.process.wait(timeout=30) is not None


@pytest.fixture
def escaping(tmp_path):
    """A stand-in SuperLink whose child leads a session of its own, as Flower's SuperExec does; the child is returned
    too (and killed after the test, whatever happened)."""
    out = tmp_path / "run"
    out.mkdir()
    superlink = SuperLink.start(["sh", "-c", "setsid sleep 300 & wait"], out=out, address="127.0.0.1:9093")
    parent = psutil.Process(superlink.process.pid)

    def escaped() -> psutil.Process | None:  # the child, once its setsid has taken effect (it runs sleep)
        with contextlib.suppress(psutil.Error):
            return next((child for child in parent.children() if child.name() == "sleep"), None)
        return None

    child = wait_until(escaped, timeout=60, interval=0.05)
    assert os.getsid(child.pid) == child.pid != os.getsid(parent.pid)
    yield superlink, child
    for process in (child, parent):
        with contextlib.suppress(psutil.Error):
            process.kill()
    superlink.process.wait(timeout=30)


def ended(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def test_server_stop_ends_what_the_superlink_started_in_other_sessions(escaping):
    superlink, child = escaping
    assert stop_server(superlink.out) is True
    superlink.process.wait(timeout=30)
    wait_until(lambda: ended(child), timeout=30, interval=0.1)


def test_what_a_crashed_superlink_left_behind_is_stopped(escaping):
    """The tree is tracked on each look at the SuperLink: its orphaned SuperExec is found after it died."""
    superlink, child = escaping
    superlink.check_alive()  # a look while it runs
    os.kill(superlink.process.pid, signal.SIGKILL)
    with pytest.raises(FederationError, match="the SuperLink exited"):
        wait_until(superlink.check_alive, timeout=30, interval=0.05)  # raises once it has exited (and is reaped)
    assert child.is_running() and child.ppid() != superlink.process.pid

    superlink.stop()

    wait_until(lambda: ended(child), timeout=30, interval=0.1)
    assert not (superlink.out / SERVER_STATE).exists()


def test_a_corrupt_state_file_is_one_clear_error(tmp_path):
    (tmp_path / SERVER_STATE).write_text("{not json")
    with pytest.raises(FederationError, match="not a SuperLink state file"):
        stop_server(tmp_path)


def test_readiness_waits_for_a_listener_and_reports_an_early_exit(stand_in, tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        stand_in.wait_ready("127.0.0.1", listener.getsockname()[1], ca=None, timeout=60)
    finally:
        listener.close()
    crashed = SuperLink.start(["false"], out=tmp_path / "crashed", address="127.0.0.1:1")
    with pytest.raises(FederationError, match=r"the SuperLink did not start \(exit code 1\)"):
        crashed.wait_ready("127.0.0.1", 1, ca=None, timeout=60)
    with pytest.raises(FederationError, match="did not start"):
        stand_in.wait_ready("127.0.0.1", 1, ca=None, timeout=1)  # alive but never serving


# --- following a run: rounds from the round log, the end from Flower ---------------------------------------------


class FakeFlower:
    """Flower's answers for one run: a status per look; each look may first append rounds to the round log."""

    def __init__(self, out_dir, script):
        self.log = RoundLog(out_dir)
        self.script = list(script)  # (rounds to append before this look, status answered)

    def status(self, run_id):
        rounds, status = self.script.pop(0)
        for number in rounds:
            self.log.append(RoundRecord(round=number, sampled=(1, 2)))
        return status

    def log_tail(self, run_id, lines=15):
        return "ServerApp: something broke"


class AliveSuperLink:
    exited = False

    def check_alive(self):
        if self.exited:
            raise FederationError("the SuperLink exited (code 1)")


def test_follow_reports_each_round_once_in_order_and_returns_the_metrics(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"run_id": "r", "completed_rounds": 3}))
    # round 0 (the initial adapter) is not reported; round 3 is logged just before Flower says "finished"
    flower = FakeFlower(tmp_path, [([0], "running"), ([], "running"), ([1, 2], "running"), ([3], "finished:completed")])
    reported: list[RoundRecord] = []
    metrics = follow_run(
        "r", cli=flower, superlink=AliveSuperLink(), out_dir=tmp_path, on_round=reported.append, interval=0.01
    )
    assert [record.round for record in reported] == [1, 2, 3]
    assert all(isinstance(record, RoundRecord) and record.sampled == (1, 2) for record in reported)
    assert metrics == {"run_id": "r", "completed_rounds": 3}


def test_a_run_that_does_not_complete_is_an_error_with_the_serverapp_log(tmp_path):
    flower = FakeFlower(tmp_path, [([1], "running"), ([], "finished:failed")])
    with pytest.raises(FederationError, match=r"ended as finished:failed(.|\n)*something broke"):
        follow_run("r", cli=flower, superlink=AliveSuperLink(), out_dir=tmp_path, interval=0.01)
    completed_without_metrics = FakeFlower(tmp_path, [([], "finished:completed")])
    with pytest.raises(FederationError, match="ended as finished:completed"):
        follow_run("r", cli=completed_without_metrics, superlink=AliveSuperLink(), out_dir=tmp_path, interval=0.01)


def test_follow_stops_when_the_superlink_exits(tmp_path):
    superlink = AliveSuperLink()
    superlink.exited = True
    with pytest.raises(FederationError, match="the SuperLink exited"):
        follow_run("r", cli=FakeFlower(tmp_path, []), superlink=superlink, out_dir=tmp_path, interval=0.01)
