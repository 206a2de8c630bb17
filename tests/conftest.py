"""Shared fixtures: a tiny BERT classifier built from a config (no download), and sample data files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import build_tiny_model, write_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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
