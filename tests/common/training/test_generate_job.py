"""``fedtune train --task generate`` end to end on a tiny Llama: validated, planned, DP-trained, scored, saved."""

from __future__ import annotations

import json

import pytest

from common.data.instructions import write_instruction_jsonl
from common.errors import BudgetExhaustedError, ModelError
from common.model.adapter import MODEL_INFO_FILE
from common.privacy.budget import BudgetSettings
from common.privacy.ledger import PrivacyLedger
from common.training.config import PrivacySettings, TrainConfig
from common.training.generate_config import GenerateJob
from common.training.generate_job import run_generate_job
from tests.causal_helpers import build_tiny_llama


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def job(model, **extra) -> GenerateJob:
    training = TrainConfig(epochs=2, batch_size=8, learning_rate=0.05, max_length=48)
    return GenerateJob(model=str(model), training=training, eval_generations=4, max_new_tokens=4, seed=0, **extra)


def test_a_dp_generative_job_trains_scores_and_records_its_task(tiny_llama, tmp_path):
    data = write_instruction_jsonl(tmp_path / "pairs.jsonl", n=60, seed=1)
    ledger = tmp_path / "ledger.jsonl"
    out = tmp_path / "out"
    result = run_generate_job(
        job(tiny_llama, privacy=PrivacySettings(target_epsilon=4.0)),
        train_path=data,
        eval_path=None,
        out_dir=out,
        budget=BudgetSettings(ledger=ledger, max_epsilon=10.0),
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "generate" and summary["privacy"]["differentially_private"]
    assert 0 < summary["privacy"]["epsilon"] <= 4.0 * 1.001
    for key in ("loss", "perplexity", "rouge_l", "bleu", "exact_match"):
        assert key in summary["metrics"]
    assert summary["data"]["train"]["examples"] + summary["data"]["eval"]["examples"] == 60
    info = json.loads((out / "adapter" / MODEL_INFO_FILE).read_text())
    assert info["task"] == "generate" and info["template"] == "plain" and "labels" not in info
    assert (out / "adapter" / "adapter_config.json").is_file()
    snapshot = PrivacyLedger(ledger).snapshot()
    assert len(snapshot.reservations()) == 2 and len(snapshot.committed) == 2  # one event per epoch
    assert result.generation is not None and result.generation.num_examples == 4


def test_a_classifier_is_refused_for_generation_before_any_spend(tiny_model_dir, tmp_path):
    data = write_instruction_jsonl(tmp_path / "pairs.jsonl", n=20)
    ledger = tmp_path / "ledger.jsonl"
    with pytest.raises(ModelError, match="needs a causal language model"):
        run_generate_job(
            job(tiny_model_dir),
            train_path=data,
            eval_path=None,
            out_dir=tmp_path / "out",
            budget=BudgetSettings(ledger=ledger, max_epsilon=10.0),
        )
    assert not ledger.exists() and not (tmp_path / "out").exists()


def test_a_plan_over_the_limit_trains_nothing(tiny_llama, tmp_path):
    data = write_instruction_jsonl(tmp_path / "pairs.jsonl", n=40)
    ledger = tmp_path / "ledger.jsonl"
    with pytest.raises(BudgetExhaustedError, match="Nothing was trained"):
        run_generate_job(
            job(tiny_llama, privacy=PrivacySettings(target_epsilon=4.0)),
            train_path=data,
            eval_path=None,
            out_dir=tmp_path / "out",
            budget=BudgetSettings(ledger=ledger, max_epsilon=1.0),
        )
    assert not ledger.exists() or not PrivacyLedger(ledger).snapshot().reservations()
    assert not (tmp_path / "out").exists()
