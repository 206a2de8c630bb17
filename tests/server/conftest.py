"""Fixtures of the server's tests."""

from __future__ import annotations

import pytest

from server.model import ServerModel
from tests.server.federation_helpers import exchanged_keys, run_config


@pytest.fixture(scope="module")
def setting(tiny_model_dir, tmp_path_factory):
    """The server's model over the tiny model, and the adapter keys sites exchange."""
    config = run_config(tiny_model_dir, tmp_path_factory.mktemp("model"))
    return ServerModel(config), exchanged_keys(config)
