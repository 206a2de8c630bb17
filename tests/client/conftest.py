"""Fixtures of the site's tests."""

from __future__ import annotations

import pytest

from tests.client.test_train_round import initial_state, run_config


@pytest.fixture
def federation(tiny_model_dir, sample_jsonl, tmp_path):
    """A run config over the tiny model, its initial adapter, a site data file and a directory."""
    config = run_config(tiny_model_dir, tmp_path)
    return config, initial_state(config), sample_jsonl, tmp_path
