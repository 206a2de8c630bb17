"""Shared fixtures: a tiny BERT classifier built from a config (no download), and sample data files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import build_tiny_model, write_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _isolated_user_dirs(tmp_path_factory: pytest.TempPathFactory):
    """Tests never touch the real per-user ledger: point the XDG data directory at a temporary one."""
    previous = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    yield
    if previous is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = previous


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_ref(tiny_model_dir: Path):
    from common.model.loading import resolve_base_model

    return resolve_base_model(str(tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_ref):
    from common.model.loading import load_tokenizer

    return load_tokenizer(tiny_ref)


@pytest.fixture
def sample_jsonl(tmp_path: Path) -> Path:
    from common.data.sample import sample_dataset

    dataset = sample_dataset(400, seed=3)
    rows = [{"text": t, "label": dataset.label_names[y]} for t, y in zip(dataset.texts, dataset.labels, strict=True)]
    return write_jsonl(tmp_path / "sample.jsonl", rows)


@pytest.fixture
def cleanup():
    """Processes to kill after the test, should it fail with any of them (or their descendants) still running."""
    from tests.processes import kill_all

    processes: list = []
    yield processes
    kill_all(processes)
