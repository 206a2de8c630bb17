"""The Flower app declared in pyproject.toml: its run config is the generated flat form of the model's defaults."""

from __future__ import annotations

import tomllib

from common.federation.config import FederationConfig, parse_run_config
from server.app_config import PYPROJECT, current, render


def test_pyproject_app_config_is_generated_from_the_config_model():
    text = PYPROJECT.read_text()
    assert current(text) == render(), "pyproject's [tool.flwr.app.config] is stale: run `make app-config`"
    app = tomllib.loads(text)["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "server.app:app", "clientapp": "client.app:app"}
    # Flower accepts run-config overrides only for keys the app declares, and the declared values parse to defaults.
    assert parse_run_config(app["config"]) == FederationConfig()


def test_apps_expose_flower_entry_points():
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    from client.app import app as client_app
    from server.app import app as server_app

    assert isinstance(client_app, ClientApp) and isinstance(server_app, ServerApp)
