"""``fedtune train --task generate`` then ``fedtune generate``, as a user runs them, on a tiny Llama."""

from __future__ import annotations

import json

import pytest

from common.data.instructions import write_instruction_jsonl
from tests.causal_helpers import build_tiny_gpt2
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


def test_train_generate_then_generate_from_a_prompt_and_a_file(tiny_gpt2, tmp_path, capsys):
    data = write_instruction_jsonl(tmp_path / "pairs.jsonl", n=40, seed=2)
    out = tmp_path / "run"
    common = ["--model", str(tiny_gpt2), "--data", str(data), "--ledger", str(tmp_path / "ledger.jsonl")]
    code = run_cli(["train", *common, "--epochs", "1", "--batch-size", "8", "--max-length", "48", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "recipe (" in printed and "ROUGE-L" in printed  # the task came from the model's config
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "generate" and summary["privacy"]["differentially_private"]

    single = tmp_path / "one.jsonl"
    code = run_cli(
        [
            "generate",
            "--adapter",
            str(out / "adapter"),
            "--prompt",
            "Add 3 and 4.",
            "--out",
            str(single),
            "--max-new-tokens",
            "3",
        ]
    )
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in single.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["prompt"] == "Add 3 and 4." and isinstance(rows[0]["generation"], str)

    many = tmp_path / "many.jsonl"
    code = run_cli(
        [
            "generate",
            "--adapter",
            str(out / "adapter"),
            "--data",
            str(data),
            "--out",
            str(many),
            "--max-new-tokens",
            "2",
            "--batch-size",
            "16",
        ]
    )
    assert code == 0
    assert len(many.read_text().splitlines()) == 40


def test_generate_refuses_a_classifier_adapter_and_bad_inputs(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "clf"
    assert (
        run_cli(
            [
                "train",
                "--model",
                str(tiny_model_dir),
                "--no-dp",
                "--max-epsilon",
                "none",
                "--epochs",
                "1",
                "--ledger",
                str(tmp_path / "l.jsonl"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    code = run_cli(["generate", "--adapter", str(out / "adapter"), "--prompt", "hi", "--out", str(tmp_path / "g")])
    assert code != 0 and "not a generative adapter" in capsys.readouterr().err
    code = run_cli(["generate", "--adapter", str(out / "adapter"), "--out", str(tmp_path / "g")])
    assert code == 2 and "exactly one of --prompt" in capsys.readouterr().err
