"""Predicting with a trained classification adapter: the recorded settings, the input rules, the output formats."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data.sample import sample_dataset
from common.data.spec import DataSpec
from common.errors import ConfigError, DataValidationError, ModelError
from common.inference.predict import (
    DEFAULT_MAX_LENGTH,
    Predictions,
    TextsToPredict,
    check_output,
    output_format,
    predict_texts,
    read_classifier_adapter,
    read_texts_file,
    render_predictions,
    write_predictions,
)
from common.model.adapter import MODEL_INFO_FILE, MODEL_INFO_FORMAT
from tests.helpers import run_cli, write_jsonl

LABELS = ("negative", "positive")


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A classifier adapter trained on the built-in sample and evaluated on a file: (run directory, eval file)."""
    root = tmp_path_factory.mktemp("predict")
    held_out = sample_dataset(200, seed=11)
    rows = [{"text": t, "label": held_out.label_names[y]} for t, y in zip(held_out.texts, held_out.labels, strict=True)]
    eval_file = write_jsonl(root / "eval.jsonl", rows)
    out = root / "run"
    args = ["train", "--model", str(tiny_model_dir), "--eval-data", str(eval_file), "--out", str(out)]
    options = [
        "--no-dp",
        "--max-epsilon",
        "none",
        "--epochs",
        "2",
        "--lr",
        "0.003",
        "--max-length",
        "24",
        "--seed",
        "0",
    ]
    assert run_cli([*args, *options, "--ledger", str(root / "ledger.jsonl")]) == 0
    return out, eval_file


def test_predicting_the_evaluation_file_reproduces_the_jobs_evaluation(trained):
    out, eval_file = trained
    summary = json.loads((out / "summary.json").read_text())
    adapter = read_classifier_adapter(out / "adapter")
    assert adapter.labels == LABELS and adapter.max_length == 24 and adapter.pooling == "cls"
    rows = read_texts_file(eval_file, DataSpec(), adapter.labels)
    seen: list[int] = []
    result = predict_texts(adapter, rows, device=torch.device("cpu"), progress=lambda done, _: seen.append(done))
    assert seen == [64, 128, 192, 200]
    assert result.metrics is not None and result.metrics.num_examples == 200
    assert result.metrics.accuracy == summary["metrics"]["accuracy"] != 0.5  # not a constant classifier
    for key in ("macro_f1", "loss", "roc_auc"):
        assert math.isclose(getattr(result.metrics, key), summary["metrics"][key], rel_tol=0, abs_tol=1e-9)
    assert np.allclose(result.probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert result.predicted == result.probabilities.argmax(axis=1).tolist()


def test_unlabelled_rows_are_predicted_and_only_labelled_rows_scored(trained, tmp_path):
    out, _ = trained
    adapter = read_classifier_adapter(out / "adapter")
    data = write_jsonl(
        tmp_path / "d.jsonl",
        [{"text": "the battery was great"}, {"text": "awful coffee", "label": None}, {"text": "awful", "label": 0}],
    )
    rows = read_texts_file(data, DataSpec(), adapter.labels)
    assert rows.labels == (None, None, 0) and rows.labelled == [2]
    result = predict_texts(adapter, rows, batch_size=2, device=torch.device("cpu"))
    assert result.probabilities.shape == (3, 2)
    assert result.metrics is not None and result.metrics.num_examples == 1
    none = read_texts_file(write_jsonl(tmp_path / "u.jsonl", [{"text": "fine"}]), DataSpec(), adapter.labels)
    assert predict_texts(adapter, none, device=torch.device("cpu")).metrics is None


def test_labels_by_name_or_index_and_an_optional_csv_label_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("label,text\npositive,good\n1,fine\n,no label\n 0 ,bad\n")
    assert read_texts_file(path, DataSpec(), LABELS).labels == (1, 1, None, 0)
    path.write_text("id,text\n1,good\n")
    assert read_texts_file(path, DataSpec(), LABELS).labels == (None,)
    tsv = tmp_path / "d.tsv"
    tsv.write_text('body\tstars\nit \'s "great"\tpositive\n')
    rows = read_texts_file(tsv, DataSpec(text_column="body", label_column="stars"), LABELS)
    assert rows.texts == ('it \'s "great"',) and rows.labels == (1,)


@pytest.mark.parametrize(
    ("content", "line", "rule"),
    [
        ('{"text": "a"}\n{"label": "positive"}\n', 2, "missing column 'text' (this line has ['label'])"),
        ('{"text": " "}\n', 1, "column 'text' is empty"),
        ('{"text": 3}\n', 1, "column 'text' must be a string; got int 3"),
        ('{"text": "a", "label": "neutral"}\n', 1, "label 'neutral' is not one of the adapter's labels"),
        ('{"text": "a", "label": 2}\n', 1, "(names, or indices 0..1)"),
        ('{"text": "a", "label": true}\n', 1, "label must be a name (string) or an index (integer); got True"),
        ('{"text": "a", "label": 1.0}\n', 1, "got 1.0"),
        ('["a"]\n', 1, "each line must be a JSON object; got list"),
        ('{"text": "a"}\n{"text": \n', 2, "not valid JSON"),
    ],
)
def test_each_bad_row_is_one_error_naming_file_line_and_rule(tmp_path, content, line, rule):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(DataValidationError) as info:
        read_texts_file(path, DataSpec(), LABELS)
    assert str(info.value).startswith(f"{path}:{line}: ") and rule in str(info.value)


def test_bad_files(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("body,label\nx,1\n")
    with pytest.raises(DataValidationError, match=r"d.csv:1: missing column 'text' in the header"):
        read_texts_file(path, DataSpec(), LABELS)
    path.write_text("text,label\n")
    with pytest.raises(DataValidationError, match="holds a header but no records"):
        read_texts_file(path, DataSpec(), LABELS)
    path.write_text("text,label\na,1\nb,1,2\n")
    with pytest.raises(DataValidationError, match=r"d.csv:3: row has 3 fields"):
        read_texts_file(path, DataSpec(), LABELS)
    (tmp_path / "d.txt").write_text("text\na\n")
    with pytest.raises(DataValidationError, match="cannot tell the format"):
        read_texts_file(tmp_path / "d.txt", DataSpec(), LABELS)


def _adapter_dir(tmp_path: Path, info: dict | None) -> Path:
    directory = tmp_path / "adapter"
    directory.mkdir()
    (directory / "adapter_config.json").write_text("{}")
    if info is not None:
        (directory / MODEL_INFO_FILE).write_text(json.dumps({"format": MODEL_INFO_FORMAT, **info}))
    return directory


def test_recorded_settings_and_defaults_for_older_adapters(tmp_path):
    directory = _adapter_dir(tmp_path, {"base_model": "m", "labels": list(LABELS), "pooling": "mean"})
    adapter = read_classifier_adapter(directory)
    assert (adapter.base_model, adapter.pooling, adapter.max_length) == ("m", "mean", DEFAULT_MAX_LENGTH)
    assert read_classifier_adapter(directory, model="other").base_model == "other"


@pytest.mark.parametrize(
    ("info", "rule"),
    [
        (None, "no fedtune_model.json; predicting needs the labels and pooling"),
        ({"task": "generate", "base_model": "m"}, "a generative adapter (task 'generate'); use `fedtune generate"),
        ({"base_model": "m", "labels": ["only"]}, "'labels' must be a list of at least 2 label names"),
        ({"base_model": "m", "labels": list(LABELS), "pooling": "max"}, "unknown pooling 'max'"),
        ({"base_model": "m", "labels": list(LABELS), "max_length": "64"}, "'max_length' must be an integer >= 2"),
        ({"labels": list(LABELS)}, "no base model recorded; give one with --model"),
    ],
)
def test_adapters_predict_cannot_use(tmp_path, info, rule):
    directory = _adapter_dir(tmp_path, info)
    with pytest.raises(ModelError) as error:
        read_classifier_adapter(directory)
    assert str(directory) in str(error.value) and rule in str(error.value)


def test_missing_and_non_peft_directories(tmp_path):
    with pytest.raises(ModelError, match="no such adapter directory"):
        read_classifier_adapter(tmp_path / "nope")
    with pytest.raises(ModelError, match="not a PEFT adapter directory"):
        read_classifier_adapter(tmp_path)


def _predictions(texts: tuple[str, ...]) -> Predictions:
    rows = TextsToPredict(texts=texts, labels=(None,) * len(texts), label_names=LABELS, source="in.jsonl")
    proba = np.array([[0.25, 0.75], [0.9, 0.1]][: len(texts)])
    return Predictions(rows=rows, probabilities=proba, metrics=None)


def test_output_formats(tmp_path):
    predictions = _predictions(('a "quoted", text\nover two lines', "b"))
    lines = render_predictions(predictions, "jsonl", include_text=True).splitlines()
    assert json.loads(lines[0]) == {
        "row": 0,
        "text": 'a "quoted", text\nover two lines',
        "label": "positive",
        "probabilities": {"negative": 0.25, "positive": 0.75},
    }
    assert "text" not in json.loads(render_predictions(predictions, "jsonl", include_text=False).splitlines()[1])
    table = list(csv.reader(io.StringIO(render_predictions(predictions, "csv", include_text=True))))
    assert table == [
        ["text", "label", "p_negative", "p_positive"],
        ['a "quoted", text\nover two lines', "positive", "0.25", "0.75"],
        ["b", "negative", "0.9", "0.1"],
    ]
    assert write_predictions(predictions, tmp_path / "p.tsv", include_text=False) == "tsv"
    assert (
        tmp_path / "p.tsv"
    ).read_text() == "label\tp_negative\tp_positive\npositive\t0.25\t0.75\nnegative\t0.9\t0.1\n"


def test_what_an_output_path_cannot_hold_is_refused_before_anything_is_written(tmp_path):
    assert [output_format(Path(f"x{s}")) for s in (".jsonl", ".CSV", ".tsv")] == ["jsonl", "csv", "tsv"]
    for bad in ("x.json", "x.txt", "x"):
        with pytest.raises(ConfigError, match="cannot tell the output format from the suffix"):
            output_format(Path(bad))
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        output_format(tmp_path / "dir.csv")
    predictions = _predictions(("one\ttab",))
    with pytest.raises(ConfigError, match=r"in.jsonl: a text \(row 0\) holds a tab or a line break"):
        write_predictions(predictions, tmp_path / "p.tsv")
    assert not (tmp_path / "p.tsv").exists()
    check_output(predictions.rows, "tsv", include_text=False)  # without the texts, it fits
