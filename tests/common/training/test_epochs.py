"""``fedtune train`` pass by pass: per-epoch ledger events, early stopping, the kept epoch's exact adapter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import common.training.epochs as epochs_module
from common.privacy.accountant import get_accountant
from common.privacy.budget import BudgetSettings
from common.privacy.ledger import PrivacyLedger
from common.training.config import PrivacySettings, TrainConfig, TrainJob
from common.training.epochs import epoch_seed
from common.training.evaluation import EvalMetrics
from common.training.job import JobResult, PreparedData, run_train_job
from common.training.selection import SelectionSettings
from tests.helpers import write_jsonl

DELTA = 1e-5


def _data(directory: Path, size: int = 80) -> Path:
    from common.data.sample import sample_dataset

    data = sample_dataset(size, seed=7)
    rows = [{"text": t, "label": data.label_names[y]} for t, y in zip(data.texts, data.labels, strict=True)]
    return write_jsonl(directory / "train.jsonl", rows)


def _job(model: Path, *, epochs: int = 3, selection: SelectionSettings | None = None, **training: Any) -> TrainJob:
    return TrainJob(
        model=str(model),
        training=TrainConfig(epochs=epochs, batch_size=8, learning_rate=0.05, max_length=16, **training),
        privacy=PrivacySettings(noise_multiplier=1.0, delta=DELTA),  # fixed sigma: no calibration (fast)
        selection=selection if selection is not None else SelectionSettings(),
        seed=0,
        device="cpu",
    )


class Calls:
    """Every train_adapter call's keyword arguments and result (adapter tensors cloned at return)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.kwargs: list[dict[str, Any]] = []
        self.results: list[Any] = []
        self.adapters: list[dict[str, torch.Tensor]] = []
        real = epochs_module.train_adapter

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.kwargs.append(dict(kwargs))
            result = real(*args, **kwargs)
            self.results.append(result)
            self.adapters.append({k: v.clone() for k, v in result.adapter.items()})
            return result

        monkeypatch.setattr(epochs_module, "train_adapter", wrapper)


def _fixed_metrics(monkeypatch: pytest.MonkeyPatch, losses: list[float]) -> None:
    """Make the evaluation of epoch k report ``losses[k-1]`` (everything else fixed)."""
    values: Iterator[float] = iter(losses)

    def fake(*_args: Any, **_kwargs: Any) -> EvalMetrics:
        return EvalMetrics(
            num_examples=16, loss=next(values), accuracy=0.5, macro_f1=0.5, precision=0.5, recall=0.5, roc_auc=0.5
        )

    monkeypatch.setattr(epochs_module, "evaluate", fake)


def _run(job: TrainJob, directory: Path, **kwargs: Any) -> tuple[JobResult, PreparedData, Path]:
    captured: dict[str, Any] = {}
    ledger = directory / "ledger.jsonl"
    result = run_train_job(
        job,
        train_path=_data(directory),
        eval_path=None,
        out_dir=directory / "out",
        budget=BudgetSettings(ledger=ledger, max_epsilon=10.0),
        on_plan=lambda prepared, _plan, _projection: captured.update(prepared=prepared),
        **kwargs,
    )
    return result, captured["prepared"], ledger


def _saved_adapter(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "out" / "adapter" / "adapter_model.safetensors"))


def _assert_same(saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(saved) == set(expected)
    for key, tensor in expected.items():
        assert saved[key].dtype == tensor.dtype and torch.equal(saved[key], tensor), key


def test_kept_epoch_is_the_best_by_loss_and_its_adapter_is_saved_exactly(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Calls(monkeypatch)
    result, _, _ = _run(_job(tiny_model_dir, epochs=4, selection=SelectionSettings(metric="loss")), tmp_path)
    history = [m["loss"] for m in result.summary["history"]]
    assert len(history) == len(calls.adapters) == 4
    kept = result.summary["training"]["kept_epoch"]
    assert kept == min(range(1, 5), key=lambda e: (history[e - 1], e))  # argmin, ties -> earliest
    assert result.summary["metrics"]["loss"] == history[kept - 1]
    _assert_same(_saved_adapter(tmp_path), calls.adapters[kept - 1])


@pytest.mark.parametrize(
    ("losses", "kept"),
    [([3.0, 1.0, 2.0, 2.5], 2), ([2.0, 1.0, 1.0, 3.0], 2), ([1.0, 1.0, 1.0, 1.0], 1), ([4.0, 3.0, 2.0, 1.0], 4)],
)
def test_saved_adapter_is_the_kept_epochs_not_the_last(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, losses: list[float], kept: int
) -> None:
    calls = Calls(monkeypatch)
    _fixed_metrics(monkeypatch, losses)
    result, _, _ = _run(_job(tiny_model_dir, epochs=4, selection=SelectionSettings(metric="loss")), tmp_path)
    assert result.summary["training"]["kept_epoch"] == result.outcome.kept_epoch == kept
    assert result.summary["training"]["epochs_trained"] == 4 and result.summary["training"]["stop_reason"] is None
    saved = _saved_adapter(tmp_path)
    _assert_same(saved, calls.adapters[kept - 1])
    if kept != 4:  # the adapters differ after a pass of training, so the last one must not be what was saved
        assert any(not torch.equal(saved[k], v) for k, v in calls.adapters[-1].items())


def test_patience_stops_after_that_many_non_improving_epochs_and_spends_only_them(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Calls(monkeypatch)
    _fixed_metrics(monkeypatch, [1.0, 2.0, 1.0, 0.5, 0.1])
    job = _job(tiny_model_dir, epochs=5, selection=SelectionSettings(metric="loss", patience=2))
    result, prepared, ledger = _run(job, tmp_path)
    training = result.summary["training"]
    assert len(calls.kwargs) == training["epochs_trained"] == 3 and training["epochs_planned"] == 5
    assert training["kept_epoch"] == 1
    assert training["stop_reason"] == (
        "stopped early after epoch 3: loss on the evaluation split (not covered by DP) did not improve for "
        "2 epoch(s) (patience 2; best 1 in epoch 1)"
    )
    _assert_same(_saved_adapter(tmp_path), calls.adapters[0])

    plan = result.plan
    reserves = PrivacyLedger(ledger).snapshot().reservations()
    assert [r.round for r in reserves] == [1, 2, 3]
    events = [e for r in reserves if (e := r.dp_event()) is not None]
    assert events == [plan.epoch_event] * 3
    accountant = get_accountant("prv")
    trained = accountant.epsilon(events, delta=DELTA)
    ref = PrivacyLedger(ledger).dataset(prepared.train.texts, dataset_id="d")
    spent = PrivacyLedger(ledger).spent(ref, delta=DELTA)
    assert spent == pytest.approx(trained, rel=1e-9)
    assert plan.planned_epsilon is not None and spent < plan.planned_epsilon
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["privacy"]["epsilon"] == pytest.approx(trained, rel=1e-9)
    assert summary["privacy"]["steps"] == training["steps"] == 3 * plan.epoch.steps


def test_epoch_seed_differs_per_epoch_and_none_stays_none() -> None:
    seeds = [epoch_seed(0, e) for e in range(1, 11)]
    assert len(set(seeds)) == 10 and all(isinstance(s, int) and 0 <= s < 2**62 for s in seeds)
    assert seeds == [epoch_seed(0, e) for e in range(1, 11)]  # deterministic
    assert seeds != [epoch_seed(1, e) for e in range(1, 11)] and epoch_seed(0, 1) != 0
    assert all(epoch_seed(None, e) is None for e in range(1, 4))


def test_per_epoch_events_compose_to_the_whole_plan(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Calls(monkeypatch)
    result, prepared, ledger = _run(_job(tiny_model_dir, epochs=3), tmp_path)
    plan = result.plan
    assert [c["seed"] for c in calls.kwargs] == [epoch_seed(0, e) for e in (1, 2, 3)]
    events = [e for r in PrivacyLedger(ledger).snapshot().reservations() if (e := r.dp_event()) is not None]
    assert len(events) == 3 and plan.event is not None
    assert sum(e.steps for e in events) == plan.steps.steps == 3 * plan.epoch.steps
    assert {(e.noise_multiplier, e.sample_rate, e.max_grad_norm) for e in events} == {
        (plan.event.noise_multiplier, plan.event.sample_rate, plan.event.max_grad_norm)
    }
    accountant = get_accountant("prv")
    whole = accountant.epsilon([plan.event], delta=DELTA)
    assert accountant.epsilon(events, delta=DELTA) == pytest.approx(whole, rel=1e-9)
    assert plan.planned_epsilon == pytest.approx(whole, rel=1e-9)
    spent = PrivacyLedger(ledger).spent(
        PrivacyLedger(ledger).dataset(prepared.train.texts, dataset_id="d"), delta=DELTA
    )
    assert spent == pytest.approx(whole, rel=1e-9)
    assert result.epsilon == pytest.approx(whole, rel=1e-9)
    assert all(e.noise_multiplier == 1.0 for e in events)


def test_schedule_and_optimizer_state_continue_across_epochs(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Calls(monkeypatch)
    progress: list[tuple[int, int]] = []
    job = _job(tiny_model_dir, epochs=3, lr_schedule="linear", warmup_fraction=0.1)
    result, _, _ = _run(job, tmp_path, progress=lambda step, total, _loss: progress.append((step, total)))
    plan = result.plan
    per_epoch = plan.epoch.steps
    assert [c["start_step"] for c in calls.kwargs] == [0, per_epoch, 2 * per_epoch]
    schedules = {id(c["schedule"]) for c in calls.kwargs}
    assert len(schedules) == 1 and calls.kwargs[0]["schedule"].total_steps == plan.steps.steps
    assert calls.kwargs[0]["schedule"].kind == "linear"
    assert all(c["plan"] == plan.epoch for c in calls.kwargs)
    assert calls.kwargs[0]["optimizer_state"] is None
    for before, call in zip(calls.results, calls.kwargs[1:], strict=False):
        assert call["optimizer_state"] is before.optimizer_state
        assert before.optimizer_state["state"]  # AdamW moments, not an empty state
    # Progress counts the whole plan: 1 .. total, once each.
    assert progress == [(step, plan.steps.steps) for step in range(1, plan.steps.steps + 1)]


def test_every_pass_trains_in_the_jobs_precision(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    calls = Calls(monkeypatch)
    job = TrainJob.model_validate({**_job(tiny_model_dir, epochs=2).model_dump(), "precision": "bf16"})
    result, _, _ = _run(job, tmp_path)
    assert [(k["precision"], k["gradient_checkpointing"]) for k in calls.kwargs] == [("bf16", False)] * 2
    # The ledger charges the planned sigma, whatever Opacus was told under bf16 (common/training/precision.py).
    assert [e.noise_multiplier for e in result.outcome.events] == [1.0, 1.0]


@pytest.mark.parametrize("case", ["fp16-under-dp", "bf16-on-a-cuda-device-without-bf16"])
def test_an_unsupported_precision_is_refused_before_the_ledger_is_touched(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    from common.errors import ConfigError

    values = _job(tiny_model_dir, epochs=1).model_dump()
    if case == "fp16-under-dp":
        values["precision"], match = "fp16", "loss scaling"
    else:  # a CUDA device that predates bf16 (e.g. a V100), simulated: nothing reaches CUDA before the check
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
        values.update(precision="bf16", device="cuda")
        match = "does not support bfloat16"
    with pytest.raises(ConfigError, match=match):
        _run(TrainJob.model_validate(values), tmp_path)
    assert not (tmp_path / "ledger.jsonl").exists() and not (tmp_path / "out").exists()
