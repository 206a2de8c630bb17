"""``fedtune train --task generate`` end to end on a tiny Llama: validated, planned, DP-trained, scored, saved."""

from __future__ import annotations

import json

import pytest
import torch

from common.data.instructions import write_instruction_jsonl
from common.errors import BudgetExhaustedError, ConfigError, ModelError
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


def test_a_bf16_checkpointed_job_charges_the_plan_and_records_its_settings(tiny_llama, tmp_path):
    data = write_instruction_jsonl(tmp_path / "pairs.jsonl", n=40, seed=2)
    ledger = tmp_path / "ledger.jsonl"
    bf16_checkpointed = GenerateJob(
        model=str(tiny_llama),
        training=TrainConfig(epochs=1, batch_size=8, learning_rate=0.05, max_length=48),
        privacy=PrivacySettings(target_epsilon=4.0),
        eval_generations=0,
        seed=0,
        precision="bf16",
        gradient_checkpointing=True,
    )
    result = run_generate_job(
        bf16_checkpointed,
        train_path=data,
        eval_path=None,
        out_dir=tmp_path / "out",
        budget=BudgetSettings(ledger=ledger, max_epsilon=10.0),
    )
    training, privacy = result.summary["training"], result.summary["privacy"]
    assert training["precision"] == "bf16" and training["gradient_checkpointing"] is True
    assert result.plan.dp is not None
    # The planned sigma and C are what the ledger charges (Opacus was told C' and sigma C / C').
    assert privacy["events"][0]["noise_multiplier"] == privacy["noise_multiplier"] == result.plan.dp.noise_multiplier
    assert privacy["events"][0]["max_grad_norm"] == result.plan.dp.max_grad_norm
    assert 0 < privacy["epsilon"] <= 4.0 * 1.001
    assert len(PrivacyLedger(ledger).snapshot().committed) == 1


@pytest.mark.parametrize("case", ["fp16-under-dp", "bf16-on-a-cuda-device-without-bf16"])
def test_an_unsupported_precision_is_refused_before_any_spend(tiny_llama, tmp_path, monkeypatch, case):
    data = write_instruction_jsonl(tmp_path / "pairs.jsonl", n=20)
    ledger = tmp_path / "ledger.jsonl"
    if case == "fp16-under-dp":
        refused, match = job(tiny_llama, precision="fp16"), "loss scaling"
    else:  # a CUDA device that predates bf16 (e.g. a V100), simulated: nothing reaches CUDA before the check
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
        refused, match = job(tiny_llama, precision="bf16", device="cuda"), "does not support bfloat16"
    with pytest.raises(ConfigError, match=match):
        run_generate_job(
            refused,
            train_path=data,
            eval_path=None,
            out_dir=tmp_path / "out",
            budget=BudgetSettings(ledger=ledger, max_epsilon=10.0),
        )
    assert not ledger.exists() and not (tmp_path / "out").exists()
