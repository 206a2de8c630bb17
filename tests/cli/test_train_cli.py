"""``fedtune train`` end to end through the CLI (tiny model, built-in sample data)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import run_cli, write_jsonl


def test_train_end_to_end_on_sample_data(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli(
        [
            "train",
            "--model",
            str(tiny_model_dir),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--seed",
            "0",
            "--max-length",
            "32",
            "--epsilon",
            "4",
            "--lr",
            "0.01",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "accuracy" in printed and "epsilon" in printed and "macro F1" in printed
    summary = json.loads((out / "summary.json").read_text())
    privacy = summary["privacy"]
    assert privacy["differentially_private"] is True
    assert 0.98 * 4 <= privacy["epsilon"] <= 4.0
    assert privacy["steps"] == summary["training"]["steps"] > 0
    assert privacy["events"][0]["noise_multiplier"] == privacy["noise_multiplier"] > 0
    assert set(summary["metrics"]) >= {"accuracy", "macro_f1", "precision", "recall", "roc_auc", "loss"}
    assert summary["data"]["train"]["examples"] + summary["data"]["eval"]["examples"] == 2400

    from peft import PeftModel

    from common.model.loading import load_base_classifier, resolve_base_model

    base = load_base_classifier(resolve_base_model(str(tiny_model_dir)), tuple(summary["labels"]))
    PeftModel.from_pretrained(base, str(out / "adapter"))


def test_bad_data_gives_one_line_and_writes_nothing(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "fine", "label": "a"}, {"text": "", "label": "b"}])
    out = tmp_path / "run"
    code = run_cli(["train", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 65
    assert err.count("\n") == 0, err
    assert f"{data}:2:" in err and "is empty" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_too_few_examples_for_privacy_settings(tiny_model_dir, tmp_path, capsys):
    rows = [{"text": f"text {i}", "label": i % 2} for i in range(20)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    code = run_cli(
        [
            "train",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(data),
            "--batch-size",
            "64",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 65
    assert "too few examples" in capsys.readouterr().err


def test_conflicting_privacy_options(tmp_path, capsys):
    code = run_cli(["train", "--no-dp", "--epsilon", "3", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "--no-dp cannot be combined" in capsys.readouterr().err


def test_out_of_range_option_names_the_flag(tmp_path, capsys):
    code = run_cli(["train", "--delta", "2", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "'--delta'" in capsys.readouterr().err


def test_debug_shows_traceback(tmp_path, capsys):
    code = run_cli(["--debug", "train", "--no-dp", "--epsilon", "3", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["train"], ["sample-data"]])
def test_help_of_every_command(command):
    result = subprocess.run(
        [sys.executable, "-m", "cli.app", *command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def test_sample_data_command(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert run_cli(["sample-data", "--out", str(out), "--size", "50"]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 50 and json.loads(lines[0])["label"] in {"negative", "positive"}
    assert run_cli(["sample-data", "--out", str(out)]) == 2


def test_repeated_runs_are_refused_once_the_next_would_pass_the_limit(tiny_model_dir, sample_jsonl, tmp_path, capsys):
    ledger = tmp_path / "ledger.jsonl"
    common = [
        "train",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(sample_jsonl),
        "--ledger",
        str(ledger),
        "--max-epsilon",
        "7",
        "--epsilon",
        "5",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--max-length",
        "24",
    ]
    assert run_cli([*common, "--out", str(tmp_path / "run1")]) == 0
    first = json.loads((tmp_path / "run1" / "summary.json").read_text())["privacy"]["ledger"]
    assert first["dataset_epsilon_before"] == 0.0 and first["dataset_epsilon_after"] <= 5.0
    assert run_cli([*common, "--out", str(tmp_path / "run2")]) == 0  # 5 (+) 5 composes to about 6.2 <= 7
    second = json.loads((tmp_path / "run2" / "summary.json").read_text())["privacy"]["ledger"]
    assert second["dataset_epsilon_before"] == pytest.approx(first["dataset_epsilon_after"])
    assert 5.0 < second["dataset_epsilon_after"] <= 7.0
    capsys.readouterr()
    before = ledger.read_bytes()
    assert run_cli([*common, "--out", str(tmp_path / "run3")]) == 3  # a third would bring it to about 7.2
    err = capsys.readouterr().err
    assert "privacy budget exhausted" in err and "over the limit 7" in err
    assert ledger.read_bytes() == before, "a refused run must leave the ledger unchanged"
    assert not (tmp_path / "run3").exists()

    assert run_cli(["audit", str(ledger), "--verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (dataset,) = report["ledgers"][0]["datasets"]
    assert report["ledgers"][0]["verified"] is True
    assert dataset["events"] == 2 and dataset["runs"] == 2 and dataset["pending"] == 0
    assert dataset["epsilon"] == pytest.approx(second["dataset_epsilon_after"])
    assert dataset["limit"] == 7.0 and dataset["remaining"] == pytest.approx(7.0 - dataset["epsilon"])


def test_no_dp_baseline_needs_an_unlimited_budget_and_is_recorded(tiny_model_dir, sample_jsonl, tmp_path, capsys):
    ledger = tmp_path / "ledger.jsonl"
    common = [
        "train",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(sample_jsonl),
        "--ledger",
        str(ledger),
        "--no-dp",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--max-length",
        "24",
    ]
    assert run_cli([*common, "--out", str(tmp_path / "a")]) == 3
    assert "infinite epsilon" in capsys.readouterr().err
    assert run_cli([*common, "--max-epsilon", "none", "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    assert run_cli(["audit", str(ledger), "--json"]) == 0
    (dataset,) = json.loads(capsys.readouterr().out)["ledgers"][0]["datasets"]
    assert dataset["non_private"] is True and dataset["epsilon"] is None


def test_data_the_tokenizer_does_not_cover_warns_or_with_strict_data_is_refused_before_any_spend(
    tiny_model_dir, tmp_path, capsys
):
    rows = [{"text": "数据隐私保护" * 3 + str(i), "label": i % 2} for i in range(60)]
    data = write_jsonl(tmp_path / "zh.jsonl", rows)
    ledger = tmp_path / "ledger.jsonl"
    common = ["train", "--model", str(tiny_model_dir), "--data", str(data), "--ledger", str(ledger)]
    code = run_cli([*common, "--strict-data", "--out", str(tmp_path / "strict")])
    err = capsys.readouterr().err
    assert code == 65 and "of tokens are unknown" in err and "--strict-data" not in err.split("unknown")[0]
    assert "nothing was trained or spent" in err
    assert not ledger.exists() and not (tmp_path / "strict").exists()
    code = run_cli([*common, "--epochs", "1", "--out", str(tmp_path / "lenient")])
    assert code == 0 and "warning:" in capsys.readouterr().out


class _Captured(Exception):
    """Raised by a stand-in job runner: the parsed job was seen, nothing runs."""


def _capture_job(monkeypatch: pytest.MonkeyPatch, module: str, name: str) -> dict[str, object]:
    import importlib

    seen: dict[str, object] = {}

    def runner(job: object, **_kwargs: object) -> None:
        seen["job"] = job
        raise _Captured

    monkeypatch.setattr(importlib.import_module(module), name, runner)
    return seen


@pytest.mark.parametrize(
    ("args", "precision", "checkpointing"),
    [([], "fp32", False), (["--precision", "bf16", "--gradient-checkpointing"], "bf16", True)],
)
def test_precision_and_checkpointing_options_reach_the_generate_job(
    tmp_path, monkeypatch, args, precision, checkpointing
):
    from tests.causal_helpers import build_tiny_gpt2

    model = str(build_tiny_gpt2(tmp_path / "gpt2"))  # --task generate checks that the model is a causal LM
    seen = _capture_job(monkeypatch, "common.training.generate_job", "run_generate_job")
    with pytest.raises(_Captured):
        run_cli(["train", "--task", "generate", "--model", model, "--out", str(tmp_path / "o"), *args])
    job = seen["job"]
    assert (job.precision, job.gradient_checkpointing) == (precision, checkpointing)


@pytest.mark.parametrize(("args", "precision"), [([], "fp32"), (["--precision", "bf16"], "bf16")])
def test_precision_option_reaches_the_classification_job(tiny_model_dir, tmp_path, monkeypatch, args, precision):
    seen = _capture_job(monkeypatch, "common.training.job", "run_train_job")
    with pytest.raises(_Captured):
        run_cli(["train", "--task", "classify", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"), *args])
    assert seen["job"].precision == precision


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--precision", "fp8"], 2, ["'--precision'", "fp32", "bf16", "fp16"]),
        (["--precision", "fp16"], 2, ["--precision fp16 cannot be used with DP-SGD", "loss scaling"]),
        (["--gradient-checkpointing"], 2, ["--gradient-checkpointing applies to --task generate"]),
    ],
)
def test_bad_precision_or_checkpointing_is_one_line_before_anything_runs(
    tiny_model_dir, tmp_path, capsys, args, code, words
):
    ledger = tmp_path / "ledger.jsonl"
    base = ["train", "--task", "classify", "--model", str(tiny_model_dir), "--ledger", str(ledger)]
    assert run_cli([*base, "--out", str(tmp_path / "o"), *args]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    assert not ledger.exists() and not (tmp_path / "o").exists()
