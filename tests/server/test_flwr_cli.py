"""The `flwr` CLI layer: the TOML files it hands Flower read back exactly (by Flower itself), and its answers parse."""

from __future__ import annotations

import subprocess
import tomllib

import pytest

from common.errors import FederationError
from common.federation.config import FederationConfig, parse_run_config
from server import flwr_cli
from server.flwr_cli import CONNECTION, FlwrCli, connection_config, parse_json_answer, write_run_config

AWKWARD = 'it\'s a "quoted" dir with spaces \\ and a backslash'


def test_connection_file_reads_back_through_flowers_own_reader(tmp_path, monkeypatch):
    from flwr.cli.flower_config import read_superlink_connection

    ca = tmp_path / AWKWARD / "ca.pem"
    cli = FlwrCli.connect(tmp_path / "run", "127.0.0.1:9093", ca=ca)
    assert cli.home == tmp_path / "run" / "flwr-home"
    written = tomllib.loads((cli.home / "config.toml").read_text())
    assert written == connection_config("127.0.0.1:9093", ca=ca)
    assert written["superlink"]["default"] == CONNECTION

    monkeypatch.setenv("FLWR_HOME", str(cli.home))
    connection = read_superlink_connection()  # the default connection, as `flwr` itself finds it
    assert connection.name == CONNECTION
    assert connection.address == "127.0.0.1:9093"
    assert connection.root_certificates == str(ca.resolve())
    assert not connection.insecure


def test_plaintext_connection_says_insecure_and_names_no_certificate(tmp_path):
    cli = FlwrCli.connect(tmp_path, "127.0.0.1:9093", ca=None)
    section = tomllib.loads((cli.home / "config.toml").read_text())["superlink"][CONNECTION]
    assert section == {"address": "127.0.0.1:9093", "insecure": True}


def test_run_config_file_gives_back_the_federation_config(tmp_path):
    from flwr.common.config import parse_config_args

    config = FederationConfig(labels=("neg", "pos"), out_dir=str(tmp_path / AWKWARD), num_rounds=3)
    path = write_run_config(tmp_path / "run_config.toml", config.to_run_config())
    assert tomllib.loads(path.read_text()) == config.to_run_config()
    from_flower = parse_config_args([str(path)])  # exactly how `flwr run --run-config FILE` reads it
    assert from_flower == config.to_run_config()
    assert parse_run_config(from_flower) == config


def test_json_answer_is_taken_from_the_first_brace():
    stdout = 'Loading project configuration...\nSuccess\n{"success": true, "run-id": 42}\n'
    assert parse_json_answer("run", stdout) == {"success": True, "run-id": 42}


@pytest.mark.parametrize("stdout", ["", "no json here", "{not json", "[1, 2]"])
def test_no_json_answer_is_an_error_naming_the_command(stdout):
    with pytest.raises(FederationError, match=r"`flwr list` failed: connection refused"):
        parse_json_answer("list", stdout, "connection refused\n")


def fake_flwr(monkeypatch, stdout):
    """Make every `flwr` call answer ``stdout``; returns the list of argument lists it was called with."""
    calls: list[list[str]] = []

    def run(args, *, flwr_home, timeout=120.0):
        calls.append(list(args))
        return subprocess.CompletedProcess(args, 0, stdout=stdout, stderr="")

    monkeypatch.setattr(flwr_cli, "run_flwr", run)
    return calls


def test_register_names_the_site_and_returns_the_node_id_bound_to_the_key(tmp_path, monkeypatch):
    cli = FlwrCli(tmp_path)
    calls = fake_flwr(monkeypatch, '✅ SuperNode 7 registered successfully.\n{"success": true, "node-id": 8123456789}')
    assert cli.register(tmp_path / "a.pub", "hospital-a") == 8123456789
    assert calls == [
        ["supernode", "register", str(tmp_path / "a.pub"), CONNECTION, "--name", "hospital-a", "--format", "json"]
    ]
    for answer in ('{"success": true}', '{"success": true, "node-id": 1}', '{"success": true, "node-id": "7"}'):
        fake_flwr(monkeypatch, answer)
        with pytest.raises(FederationError, match="answered no node id"):
            cli.register(tmp_path / "a.pub", "hospital-a")


def test_register_accepts_an_already_enrolled_key_and_refuses_other_errors(tmp_path, monkeypatch):
    cli = FlwrCli(tmp_path)
    fake_flwr(monkeypatch, '{"success": false, "error-message": "Public key already in use"}')
    assert cli.register(tmp_path / "a.pub", "a") is None
    fake_flwr(monkeypatch, '{"success": false, "error-message": "Invalid key"}')
    with pytest.raises(FederationError, match=r"cannot enrol .*a\.pub: Invalid key"):
        cli.register(tmp_path / "a.pub", "a")


def test_submit_returns_the_run_id_and_status_reads_the_listed_run(tmp_path, monkeypatch):
    cli = FlwrCli(tmp_path)
    calls = fake_flwr(monkeypatch, '{"success": true, "run-id": 1234}')
    assert cli.submit(tmp_path / "app", tmp_path / "run_config.toml") == "1234"
    assert calls[0][:4] == ["run", str(tmp_path / "app"), CONNECTION, "--run-config"]
    fake_flwr(monkeypatch, '{"success": false, "error-message": "bad config"}')
    with pytest.raises(FederationError, match="the run was not accepted: bad config"):
        cli.submit(tmp_path / "app", tmp_path / "run_config.toml")

    fake_flwr(monkeypatch, '{"success": true, "runs": [{"run-id": 1234, "status": "finished:completed"}]}')
    assert cli.status("1234") == "finished:completed"
    fake_flwr(monkeypatch, '{"success": true, "runs": []}')
    assert cli.status("1234") == ""
