from __future__ import annotations

import pytest

from common.errors import ConfigError, DataValidationError
from common.training.config import PrivacySettings, TrainConfig
from common.training.job import TrainJob, check_output_dir, plan_privacy


def test_plan_calibrates_epsilon_at_most_target_within_2_percent():
    job = TrainJob(privacy=PrivacySettings(target_epsilon=3.0, delta=1e-5), training=TrainConfig(batch_size=50))
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


def test_output_dir_must_be_new_or_empty(tmp_path):
    check_output_dir(tmp_path / "new")
    check_output_dir(tmp_path)
    (tmp_path / "x").write_text("1")
    with pytest.raises(ConfigError, match="not empty"):
        check_output_dir(tmp_path)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"target_epsilon": 1.0, "noise_multiplier": 1.0}, "exactly one"),
        ({}, "exactly one"),
        ({"target_epsilon": -1.0}, "target epsilon"),
        ({"noise_multiplier": 0.0}, "noise multiplier"),
        ({"noise_multiplier": 1.0, "max_grad_norm": float("inf")}, "infinite clip"),
        ({"noise_multiplier": 1.0, "delta": 1.0}, "less than 1"),
    ],
)
def test_privacy_settings_validation(values, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        PrivacySettings(**values)
