from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import CertificateError, ConfigError, DataValidationError, ModelError
from common.model.lora import LoraSettings
from common.training.config import PrivacySettings, TrainConfig
from common.training.job import TrainJob, plan_privacy
from common.training.preflight import (
    check_ledger_location,
    check_model_takes,
    check_output_dir,
    check_signing_key_file,
)


def test_plan_calibrates_epsilon_at_most_target_within_2_percent():
    job = TrainJob(
        privacy=PrivacySettings(target_epsilon=3.0, delta=1e-5), training=TrainConfig(batch_size=50, epochs=3)
    )
    plan = plan_privacy(job, 2000, "data.jsonl")
    assert plan.steps.sample_rate == pytest.approx(0.025) and plan.steps.steps == 120
    assert plan.dp is not None and plan.planned_epsilon is not None
    assert 0.98 * 3.0 <= plan.planned_epsilon <= 3.0


def test_fixed_sigma_and_non_private_plans():
    fixed = plan_privacy(TrainJob(privacy=PrivacySettings(noise_multiplier=1.0)), 1000, "d")
    assert fixed.dp is not None and fixed.dp.noise_multiplier == 1.0 and fixed.planned_epsilon > 0
    plain = plan_privacy(TrainJob(privacy=PrivacySettings(enabled=False)), 1000, "d")
    assert plain.dp is None and plain.planned_epsilon is None


def test_too_few_examples_for_the_batch():
    with pytest.raises(DataValidationError, match="too few examples for the batch size"):
        plan_privacy(TrainJob(training=TrainConfig(batch_size=64)), 40, "tiny.jsonl")


def test_output_dir_must_be_new_or_empty_and_is_created(tmp_path):
    new = tmp_path / "a" / "b"
    assert check_output_dir(new) == [tmp_path / "a", new]  # created, outermost first, and left empty
    assert new.is_dir() and not any(new.iterdir())
    assert check_output_dir(new) == []  # an existing empty directory is fine
    (new / "x").write_text("1")
    with pytest.raises(ConfigError, match=r"^--out .*: output directory exists and is not empty"):
        check_output_dir(new)
    with pytest.raises(ConfigError, match=r"^--out .*/x: exists and is not a directory"):
        check_output_dir(new / "x")
    with pytest.raises(ConfigError, match=r"^--out .*/x/out: cannot create or write the output directory \(Not a"):
        check_output_dir(new / "x" / "out")
    assert sorted(p.name for p in new.iterdir()) == ["x"]  # the probe file is gone


def test_ledger_location_is_probed_without_leaving_anything(tmp_path):
    ledger = tmp_path / "a" / "b" / "ledger.jsonl"
    check_ledger_location(ledger)
    assert not (tmp_path / "a").exists()
    ledger.parent.mkdir(parents=True)
    ledger.write_bytes(b"existing\n")
    check_ledger_location(ledger)
    assert ledger.read_bytes() == b"existing\n" and [p.name for p in ledger.parent.iterdir()] == ["ledger.jsonl"]
    with pytest.raises(ConfigError, match=r"^--ledger .*: this is a directory, not a regular file$"):
        check_ledger_location(ledger.parent)
    with pytest.raises(ConfigError, match=r"^--ledger .*: cannot create or write the ledger here \(Not a directory\)"):
        check_ledger_location(ledger / "inner.jsonl")
    with pytest.raises(ConfigError, match="character device"):
        check_ledger_location(Path("/dev/null"))


def test_signing_key_file_is_a_small_regular_file(tmp_path):
    check_signing_key_file(None)
    with pytest.raises(CertificateError, match=r"^--signing-key /dev/zero: this is a character device"):
        check_signing_key_file(Path("/dev/zero"))
    big = tmp_path / "big.pem"
    with big.open("wb") as handle:
        handle.truncate(1 << 30)
    with pytest.raises(CertificateError, match="1,073,741,824 bytes is not a signing key"):
        check_signing_key_file(big)


def test_model_check_finds_inputs_longer_than_the_model_takes(tiny_model_dir, tiny_ref, tiny_tokenizer):
    from common.data.dataset import LabeledTexts
    from common.model.loading import load_base_classifier
    from common.model.lora import apply_lora
    from common.training.batches import TokenizedTexts

    words = "good " * 300
    data = LabeledTexts(texts=("good", words), labels=(0, 1), label_names=("neg", "pos"), source="d")
    model = apply_lora(load_base_classifier(tiny_ref, data.label_names), LoraSettings())
    model.train()
    fits = TokenizedTexts(data, tiny_tokenizer, max_length=64)
    check_model_takes(model, (fits,), max_length=64, private=True)
    assert model.training  # the check leaves the mode as it found it
    too_long = TokenizedTexts(data, tiny_tokenizer, max_length=400)
    with pytest.raises(ModelError, match=r"fails on an input of 302 tokens \(--max-length 400\)"):
        check_model_takes(model, (fits, too_long), max_length=400, private=True)
    assert model.training


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"target_epsilon": 1.0, "noise_multiplier": 1.0}, "exactly one"),
        ({}, "exactly one"),
        ({"target_epsilon": -1.0}, "target_epsilon\n  Value error, must be a finite number > 0"),
        ({"target_epsilon": float("inf")}, "target_epsilon\n  Value error, must be a finite number > 0"),
        ({"noise_multiplier": 0.0}, "noise_multiplier\n  Value error, must be a finite number > 0"),
        ({"noise_multiplier": float("nan")}, "noise_multiplier\n  Value error, must be a finite number > 0"),
        ({"noise_multiplier": 1.0, "max_grad_norm": float("inf")}, "max_grad_norm\n.*infinite clip"),
        ({"noise_multiplier": 1.0, "max_grad_norm": float("nan")}, "max_grad_norm\n.*finite"),
        ({"noise_multiplier": 1.0, "delta": 1.0}, "less than 1"),
        ({"noise_multiplier": 1.0, "delta": float("nan")}, "delta\n  Input should be a finite number"),
    ],
)
def test_privacy_settings_validation(values, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        PrivacySettings(**values)


@pytest.mark.parametrize(
    ("model", "values", "field"),
    [
        (TrainConfig, {"learning_rate": float("inf")}, "learning_rate"),
        (TrainConfig, {"weight_decay": float("nan")}, "weight_decay"),
        (LoraSettings, {"alpha": float("inf")}, "alpha"),
        (LoraSettings, {"dropout": float("nan")}, "dropout"),
        (TrainJob, {"eval_fraction": float("nan")}, "eval_fraction"),
    ],
)
def test_every_float_setting_is_finite(model, values, field):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=f"{field}\n  Input should be a finite number"):
        model(**values)


def test_job_model_name_must_be_utf8():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"model\n  Value error, must be valid UTF-8 text \(byte 0xff"):
        TrainJob(model="mini\udcfflm")
