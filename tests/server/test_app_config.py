"""The Flower app declared in pyproject.toml parses with the same model the apps use."""

from __future__ import annotations

import tomllib
from pathlib import Path

from common.federation.config import FederationConfig, parse_run_config

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_pyproject_app_config_is_a_valid_run_config():
    app = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "server.app:app", "clientapp": "client.app:app"}
    # Flower accepts run-config overrides only for keys the app declares: every setting must be declared.
    assert set(app["config"]) == set(FederationConfig(labels=("a", "b")).to_run_config())
    config = parse_run_config(app["config"])
    assert config.strategy == "ffa" and config.labels == ("negative", "positive")
    assert parse_run_config(config.to_run_config()) == config


def test_apps_import():
    from client.app import app as client_app
    from server.app import app as server_app

    assert client_app is not None and server_app is not None
