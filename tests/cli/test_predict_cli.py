"""``fedtune train`` then ``fedtune predict``, as a user runs them (tiny BERT, the built-in sample data)."""

from __future__ import annotations

import csv
import json
import math

import pytest

from common.data.sample import sample_dataset
from common.model.adapter import MODEL_INFO_FILE, MODEL_INFO_FORMAT
from tests.helpers import run_cli, write_jsonl


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """``fedtune train`` on the built-in sample, evaluated on a labelled file: (adapter directory, summary, file)."""
    root = tmp_path_factory.mktemp("predict-cli")
    held_out = sample_dataset(150, seed=5)
    rows = [{"text": t, "label": held_out.label_names[y]} for t, y in zip(held_out.texts, held_out.labels, strict=True)]
    eval_file = write_jsonl(root / "eval.jsonl", rows)
    out = root / "run"
    code = run_cli(
        [
            "train",
            "--model",
            str(tiny_model_dir),
            "--eval-data",
            str(eval_file),
            "--out",
            str(out),
            "--ledger",
            str(root / "ledger.jsonl"),
            "--no-dp",
            "--max-epsilon",
            "none",
            "--epochs",
            "2",
            "--lr",
            "0.003",
            "--max-length",
            "32",
            "--seed",
            "0",
        ]
    )
    assert code == 0
    return out / "adapter", json.loads((out / "summary.json").read_text()), eval_file


def test_predict_on_the_evaluation_file_reproduces_the_summarys_accuracy(trained, tmp_path, capsys):
    adapter, summary, eval_file = trained
    capsys.readouterr()
    out = tmp_path / "predictions.jsonl"
    code = run_cli(["predict", "--adapter", str(adapter), "--data", str(eval_file), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    gold = [json.loads(line)["label"] for line in eval_file.read_text().splitlines()]
    assert [row["row"] for row in rows] == list(range(150))
    for row in rows:
        probabilities = row["probabilities"]
        assert list(probabilities) == summary["labels"]
        assert math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-12)
        assert row["label"] == max(probabilities, key=probabilities.__getitem__)
    accuracy = sum(row["label"] == label for row, label in zip(rows, gold, strict=True)) / len(gold)
    assert accuracy == summary["metrics"]["accuracy"] != 0.5
    assert f"accuracy {summary['metrics']['accuracy']:.4f}, macro F1 {summary['metrics']['macro_f1']:.4f}" in printed
    assert "on 150 labelled row(s)" in printed

    table = tmp_path / "predictions.csv"
    assert run_cli(["predict", "--adapter", str(adapter), "--data", str(eval_file), "--out", str(table)]) == 0
    with table.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    assert list(records[0]) == ["text", "label", "p_negative", "p_positive"]
    assert [r["label"] for r in records] == [row["label"] for row in rows]
    assert [float(r["p_positive"]) for r in records] == [row["probabilities"]["positive"] for row in rows]
    assert [r["text"] for r in records] == [json.loads(line)["text"] for line in eval_file.read_text().splitlines()]


def test_an_unlabelled_csv_file_is_predicted_without_scores(trained, tmp_path, capsys):
    adapter, _, _ = trained
    data = tmp_path / "texts.csv"
    data.write_text('id,body\n1,"the battery was great"\n2,awful coffee\n')
    out = tmp_path / "p.tsv"
    args = ["predict", "--adapter", str(adapter), "--data", str(data), "--text-column", "body", "--out", str(out)]
    code = run_cli([*args, "--no-text", "--batch-size", "1"])
    printed = capsys.readouterr().out
    assert code == 0 and "accuracy" not in printed and "2 prediction(s) written" in printed
    lines = out.read_text().splitlines()
    assert lines[0] == "label\tp_negative\tp_positive" and len(lines) == 3


def test_a_generative_adapter_is_refused_with_a_pointer_to_generate(tmp_path, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    info = {"format": MODEL_INFO_FORMAT, "base_model": "m", "task": "generate", "template": "plain"}
    (adapter / MODEL_INFO_FILE).write_text(json.dumps(info))
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "hi"}])
    out = tmp_path / "p.jsonl"
    code = run_cli(["predict", "--adapter", str(adapter), "--data", str(data), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0
    assert "a generative adapter" in err and f"fedtune generate --adapter {adapter}" in err
    assert not out.exists()


@pytest.mark.parametrize("name", ["p.json", "p.txt", "predictions"])
def test_an_output_suffix_predict_cannot_write_is_refused_and_nothing_written(trained, tmp_path, capsys, name):
    adapter, _, eval_file = trained
    out = tmp_path / name
    code = run_cli(["predict", "--adapter", str(adapter), "--data", str(eval_file), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "cannot tell the output format from the suffix" in err and ".jsonl, .csv, .tsv" in err
    assert list(tmp_path.iterdir()) == []


def test_a_missing_adapter_directory_is_one_line(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "hi"}])
    out = tmp_path / "p.jsonl"
    code = run_cli(["predict", "--adapter", str(tmp_path / "nope"), "--data", str(data), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and f"{tmp_path / 'nope'}: no such adapter directory" in err
    assert not out.exists()


def test_bad_data_is_one_line_naming_file_line_and_rule_and_nothing_written(trained, tmp_path, capsys):
    adapter, _, _ = trained
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "fine", "label": "positive"}, {"text": "x", "label": "meh"}])
    out = tmp_path / "p.jsonl"
    code = run_cli(["predict", "--adapter", str(adapter), "--data", str(data), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 65 and err.count("\n") == 0, err
    assert f"{data}:2: label 'meh' is not one of the adapter's labels ['negative', 'positive']" in err
    assert not out.exists()
    code = run_cli(["predict", "--adapter", str(adapter), "--data", str(data), "--out", str(data)])
    assert code == 2 and "is the --data file" in capsys.readouterr().err
