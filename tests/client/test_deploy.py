"""A site refuses to start, before connecting, on bad data, an exhausted ledger, or missing credentials."""

from __future__ import annotations

import pytest

from cli.app import main
from client.deploy import ClientLaunch, node_config_string, preflight, supernode_command
from common.errors import BudgetExhaustedError, ConfigError, DataValidationError, FederationError
from common.federation.site import SiteSettings, parse_site_settings
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import DatasetRef, PrivacyLedger
from tests.helpers import write_jsonl

NOWHERE = "127.0.0.1:1"  # nothing listens here: any attempt to connect would fail differently


def site_for(tmp_path, data, **kw):
    return SiteSettings(site_name="site-a", data_path=data, ledger_path=tmp_path / "ledger.jsonl", **kw)


def exhaust(site):
    from common.data.readers import read_labeled_file

    source = read_labeled_file(site.data_path)
    PrivacyLedger(site.ledger_path).reserve(
        dataset=DatasetRef(source.fingerprint, "earlier", len(source)),
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
