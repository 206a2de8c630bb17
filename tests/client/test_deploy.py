"""A site refuses to start, before connecting, on bad data, an exhausted ledger, or missing credentials."""

from __future__ import annotations

import pytest

from cli.app import main
from client.deploy import ClientLaunch, node_config_string, preflight, supernode_command
from common.errors import BudgetExhaustedError, ConfigError, DataValidationError, FederationError
from common.federation.site import SiteSettings, parse_site_settings
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import PrivacyLedger
from tests.helpers import write_jsonl

NOWHERE = "127.0.0.1:1"  # nothing listens here: any attempt to connect would fail differently


def site_for(tmp_path, data, **kw):
    return SiteSettings(site_name="site-a", data_path=data, ledger_path=tmp_path / "ledger.jsonl", **kw)


def exhaust(site):
    from common.data.readers import read_labeled_file

    source = read_labeled_file(site.data_path)
    ledger = PrivacyLedger(site.ledger_path)
    ledger.reserve(
        dataset=ledger.dataset(source.texts[:50], dataset_id="earlier"),  # 50 of its records spent everything
        event=DpSgdEvent(noise_multiplier=0.5, sample_rate=0.5, steps=300, max_grad_norm=1.0),
        delta=1e-5,
        limit=None,
        run_id="earlier",
    )


def test_exhausted_ledger_refuses_before_connecting(sample_jsonl, tmp_path):
    site = site_for(tmp_path, sample_jsonl, max_epsilon=8.0)
    exhaust(site)
    with pytest.raises(BudgetExhaustedError, match="refusing to start"):
        preflight(site, ClientLaunch(superlink=NOWHERE, ca=None, key=None, insecure=True))


def test_bad_data_refuses_before_connecting(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "ok", "label": "a"}, {"text": "", "label": "b"}])
    with pytest.raises(DataValidationError, match="is empty"):
        preflight(site_for(tmp_path, data), ClientLaunch(superlink=NOWHERE, ca=None, key=None, insecure=True))


def test_insecure_is_never_implied(sample_jsonl, tmp_path):
    site = site_for(tmp_path, sample_jsonl)
    with pytest.raises(ConfigError, match="TLS is on by default"):
        preflight(site, ClientLaunch(superlink=NOWHERE, ca=None, key=None))
    command = supernode_command(site, ClientLaunch(superlink=NOWHERE, ca=tmp_path / "ca.pem", key=tmp_path / "k"))
    assert "--insecure" not in command and "--root-certificates" in command
    assert "--auth-supernode-private-key" in command


def test_node_config_round_trips_through_flowers_parser(sample_jsonl, tmp_path):
    from flwr.common.config import parse_config_args

    site = site_for(tmp_path / "with space", sample_jsonl, max_epsilon=None, evaluate=True, seed=None)
    parsed = parse_config_args([node_config_string(site)])
    assert parse_site_settings(parsed) == site


@pytest.mark.parametrize(
    "awkward",
    [
        "site data/with spaces",
        "O'Brien's data",  # a single quote (refused before values were written with tomli_w)
        'say "hi"',  # a double quote: written as a TOML literal string
        "tab\there and a back\\slash",
        "line one\nline two",  # a newline: escaped inside a basic string
        "key=value pairs in a name",
        "ünïcode dätä",
    ],
)
def test_awkward_paths_reach_flower_unchanged(tmp_path, awkward):
    from flwr.common.config import parse_config_args

    site = SiteSettings(
        site_name=f"site {awkward}",
        data_path=tmp_path / awkward / "data.jsonl",
        ledger_path=tmp_path / awkward / "ledger.jsonl",
        max_epsilon=8.0,
        delta=1e-6,
        seed=7,
    )
    parsed = parse_config_args([node_config_string(site)])
    assert parsed == site.to_node_config()
    assert parse_site_settings(parsed) == site


@pytest.mark.parametrize("name", ['it\'s "both" quotes.jsonl', 'a "quoted"\nnewline.jsonl'])
def test_a_value_flower_cannot_carry_is_refused_with_its_key(tmp_path, name):
    with pytest.raises(FederationError, match=r"cannot pass data-path=.*both quote kinds"):
        node_config_string(site_for(tmp_path, tmp_path / name))


def test_cli_reports_one_line_and_exit_code(sample_jsonl, tmp_path, capsys):
    site = site_for(tmp_path, sample_jsonl, max_epsilon=8.0)
    exhaust(site)
    with pytest.raises(SystemExit) as info:
        main(
            [
                "client",
                "start",
                "--superlink",
                NOWHERE,
                "--data",
                str(sample_jsonl),
                "--ledger",
                str(site.ledger_path),
                "--max-epsilon",
                "8",
                "--insecure",
            ]
        )
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert "refusing to start" in err and "Traceback" not in err


def test_threads_reach_the_clientapp_processes(tmp_path, monkeypatch):
    """--threads travels in the environment every process under the SuperNode inherits, and torch obeys it."""
    import subprocess
    import sys

    from client.deploy import supernode_environment

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert "OMP_NUM_THREADS" not in supernode_environment(ClientLaunch(superlink=NOWHERE, ca=None, key=None))
    env = supernode_environment(ClientLaunch(superlink=NOWHERE, ca=None, key=None, threads=1))
    probe = [sys.executable, "-c", "import torch; print(torch.get_num_threads())"]
    assert subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout.strip() == "1"


# --- the local runtime port: checked before anything starts; 0 picks a free one ------------------------------------


@pytest.fixture
def taken_port():
    """A port on the SuperNode's runtime interface that another process is listening on."""
    import socket

    from client.deploy import RUNTIME_HOST

    with socket.create_server((RUNTIME_HOST, 0)) as listener:
        yield listener.getsockname()[1]


def test_a_taken_runtime_port_is_one_error_naming_the_option_and_a_free_port(taken_port):
    from client.deploy import check_runtime_port

    with pytest.raises(ConfigError, match=rf":{taken_port} is not available \(address already in use\)") as info:
        check_runtime_port(taken_port)
    suggested = int(str(info.value).split("e.g. --port ")[1].split(",")[0])
    check_runtime_port(suggested)  # the port suggested was free (when suggested)


def test_a_taken_runtime_port_refuses_before_anything_starts(sample_jsonl, tmp_path, taken_port):
    launch = ClientLaunch(superlink=NOWHERE, ca=None, key=None, insecure=True, runtime_port=taken_port)
    with pytest.raises(ConfigError, match=rf"runtime port 127\.0\.0\.1:{taken_port} is not available.*--port"):
        preflight(site_for(tmp_path, sample_jsonl), launch)


def test_cli_names_the_taken_port_and_the_option_in_one_line(sample_jsonl, tmp_path, taken_port, capsys):
    import psutil

    before = psutil.Process().children(recursive=True)
    with pytest.raises(SystemExit) as info:
        main(
            [
                *("client", "start", "--superlink", NOWHERE, "--insecure"),
                *("--data", str(sample_jsonl), "--ledger", str(tmp_path / "ledger.jsonl")),
                *("--port", str(taken_port)),
            ]
        )
    assert info.value.code == ConfigError.exit_code
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(error_lines) == 1
    assert f":{taken_port} is not available" in error_lines[0] and "--port" in error_lines[0]
    assert psutil.Process().children(recursive=True) == before  # no SuperNode was started


def test_port_zero_picks_a_free_port_prints_it_and_uses_it(sample_jsonl, tmp_path, monkeypatch, capsys):
    import client.deploy
    from client.deploy import check_runtime_port

    used: list[int] = []
    monkeypatch.setattr(client.deploy, "run_supernode", lambda site, launch: used.append(launch.runtime_port) or 0)
    with pytest.raises(SystemExit) as info:
        main(
            [
                *("client", "start", "--superlink", NOWHERE, "--insecure", "--port", "0"),
                *("--data", str(sample_jsonl), "--ledger", str(tmp_path / "ledger.jsonl")),
            ]
        )
    assert info.value.code == 0
    (port,) = used
    assert port > 0 and f"runtime port: {port}" in capsys.readouterr().out
    check_runtime_port(port)  # free


def test_the_supernode_binds_the_interface_the_port_was_checked_on(sample_jsonl, tmp_path):
    from client.deploy import RUNTIME_HOST

    command = supernode_command(site_for(tmp_path, sample_jsonl), ClientLaunch(NOWHERE, None, None, insecure=True))
    assert command[command.index("--host") + 1] == RUNTIME_HOST
    assert command[command.index("--port") + 1] == "9094"
