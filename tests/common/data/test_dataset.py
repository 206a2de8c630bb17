from __future__ import annotations

import json

import pytest

from common.data.dataset import LabeledTexts
from common.data.readers import read_labeled_file
from common.data.spec import DataSpec
from tests.helpers import write_jsonl


def test_fingerprint_ignores_format_order_columns_and_label_encoding(tmp_path):
    rows = [("great stuff", "pos"), ("awful", "neg"), ("fine, really", "pos")]
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"text": t, "label": y} for t, y in rows])
    csv_path = tmp_path / "b.csv"
    csv_path.write_text("y,sentence\n" + "".join(f'{y},"{t}"\n' for t, y in reversed(rows)))
    by_index = write_jsonl(tmp_path / "c.jsonl", [{"text": t, "label": {"neg": 0, "pos": 1}[y]} for t, y in rows])
    a = read_labeled_file(jsonl)
    b = read_labeled_file(csv_path, DataSpec(text_column="sentence", label_column="y"))
    c = read_labeled_file(by_index, DataSpec(labels=("neg", "pos")))
    assert a.fingerprint == b.fingerprint == c.fingerprint
    assert len(a.fingerprint) == 64


def test_fingerprint_changes_with_any_record(tmp_path):
    base = LabeledTexts(texts=("a", "b"), labels=(0, 1), label_names=("n", "p"), source="x")
    relabelled = LabeledTexts(texts=("a", "b"), labels=(1, 1), label_names=("n", "p"), source="x")
    edited = LabeledTexts(texts=("a", "c"), labels=(0, 1), label_names=("n", "p"), source="x")
    duplicated = LabeledTexts(texts=("a", "b", "b"), labels=(0, 1, 1), label_names=("n", "p"), source="x")
    assert len({base.fingerprint, relabelled.fingerprint, edited.fingerprint, duplicated.fingerprint}) == 4


def test_invariants_checked():
    with pytest.raises(ValueError, match="outside range"):
        LabeledTexts(texts=("a",), labels=(2,), label_names=("n", "p"), source="x")
    with pytest.raises(ValueError, match="1 texts but 2 labels"):
        LabeledTexts(texts=("a",), labels=(0, 1), label_names=("n", "p"), source="x")


def test_label_counts_and_subset():
    data = LabeledTexts(texts=("a", "b", "c"), labels=(0, 1, 1), label_names=("n", "p", "q"), source="x")
    assert data.label_counts() == {"n": 1, "p": 2, "q": 0}
    sub = data.subset([2, 0])
    assert sub.texts == ("c", "a") and sub.labels == (1, 0) and sub.num_labels == 3
    assert json.dumps(data.label_counts())
