"""Every bad-data case gives its own DataValidationError naming the file, the line and the rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.data.readers import read_labeled_file
from common.data.spec import DataSpec
from common.errors import DataValidationError
from tests.helpers import write_jsonl


def _error(path: Path, spec: DataSpec | None = None, **kwargs) -> str:
    with pytest.raises(DataValidationError) as info:
        read_labeled_file(path, spec, **kwargs)
    message = str(info.value)
    assert str(path) in message, message
    return message


def test_reads_jsonl_with_names(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}])
    data = read_labeled_file(path)
    assert data.texts == ("good", "bad")
    assert data.label_names == ("neg", "pos")  # inferred: sorted names
    assert data.labels == (1, 0)


def test_reads_integer_labels_and_sidecar_names(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    assert read_labeled_file(path).label_names == ("0", "1")
    (tmp_path / "labels.json").write_text(json.dumps(["negative", "positive"]))
    data = read_labeled_file(path)
    assert data.label_names == ("negative", "positive")
    assert data.labels == (0, 1)


def test_declared_labels_accept_names_and_indices(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "spam"}, {"text": "b", "label": 0}])
    data = read_labeled_file(path, DataSpec(labels=("ham", "spam")))
    assert data.labels == (1, 0)


def test_csv_with_quoted_commas_custom_columns_and_bom(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes('\ufeffid,sentence,y\n1,"hello, world",pos\n2,"say ""hi""",neg\n'.encode())
    data = read_labeled_file(path, DataSpec(text_column="sentence", label_column="y"))
    assert data.texts == ("hello, world", 'say "hi"')
    assert data.labels == (1, 0)


def test_tsv_keeps_bare_quotes(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text('sentence\tlabel\nit \'s "great"\t1\nawful\t0\n')
    data = read_labeled_file(path, DataSpec(text_column="sentence"))
    assert data.texts[0] == 'it \'s "great"'


def test_empty_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n  \n")
    assert "the file is empty" in _error(path)


def test_header_only_csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\n")
    assert "header but no records" in _error(path)


def test_missing_file(tmp_path):
    assert "no such file" in _error(tmp_path / "absent.jsonl")


def test_missing_column_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"body": "b", "label": 1}])
    message = _error(path)
    assert ":2:" in message and "missing column 'text'" in message


def test_missing_column_csv_header(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("sentence,label\nhello,1\n")
    message = _error(path)
    assert ":1:" in message and "missing column 'text' in the header" in message


def test_empty_text(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "   ", "label": 1}])
    message = _error(path)
    assert ":2:" in message and "column 'text' is empty" in message


def test_non_string_text(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": 42, "label": 0}])
    assert "must be a string" in _error(path)


def test_label_outside_declared_set(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "neg"}, {"text": "b", "label": "meh"}])
    message = _error(path, DataSpec(labels=("neg", "pos")))
    assert ":2:" in message and "'meh' is outside the label set" in message


def test_index_label_outside_declared_set(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 2}])
    message = _error(path, label_names=("neg", "pos"))
    assert ":2:" in message and "outside the label set" in message and "0..1" in message


def test_negative_integer_label(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": -1}])
    assert "is negative" in _error(path)


def test_mixed_label_kinds(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": 1}])
    assert "other labels are names" in _error(path)


def test_float_or_bool_label(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 1.5}])
    assert "name (string) or an index (integer)" in _error(path)
    path = write_jsonl(tmp_path / "e.jsonl", [{"text": "a", "label": True}])
    assert "name (string) or an index (integer)" in _error(path)


def test_single_class(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "pos"}])
    assert "only one class" in _error(path)


def test_undecodable_bytes(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "ok", "label": 0}\n{"text": "caf\xe9", "label": 1}\n')
    message = _error(path)
    assert ":2:" in message and "not valid UTF-8" in message and "0xe9" in message


def test_absurdly_long_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "x" * 2000, "label": 1}])
    message = _error(path, DataSpec(max_line_bytes=1000))
    assert ":2:" in message and "over the limit of 1,000 bytes" in message


def test_invalid_json(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": \n')
    message = _error(path)
    assert ":2:" in message and "not valid JSON" in message


def test_json_line_not_an_object(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('["a", 0]\n')
    assert "must be a JSON object" in _error(path)


def test_csv_row_with_wrong_field_count(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nhello,1\nbye,0,extra\n")
    message = _error(path)
    assert ":3:" in message and "3 fields but the header has 2" in message


def test_csv_empty_label(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nhello,\n")
    assert "column 'label' is empty" in _error(path)


def test_unknown_suffix(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("whatever\n")
    assert "cannot tell the format" in _error(path)


def test_bad_sidecar(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    (tmp_path / "labels.json").write_text('["only"]')
    with pytest.raises(DataValidationError, match=r"labels\.json: must be a JSON list"):
        read_labeled_file(path)


def test_spec_rejects_duplicate_label_names():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="distinct"):
        DataSpec(labels=("a", "a"))
