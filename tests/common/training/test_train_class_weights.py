"""``fedtune train`` with class weights: the DP label histogram is reserved, charged and reported like training."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from common.errors import BudgetExhaustedError, ConfigError
from common.privacy.accountant import get_accountant
from common.privacy.budget import BudgetSettings
from common.privacy.ledger import PrivacyLedger
from common.privacy.records import LABEL_HISTOGRAM, ReserveRecord
from common.training.config import PrivacySettings, TrainConfig, TrainJob
from common.training.job import JobResult, PreparedData, run_train_job
from tests.helpers import write_jsonl

TARGET = 4.0
DELTA = 1e-5


def _data(directory: Path, size: int = 80) -> Path:
    from common.data.sample import sample_dataset

    data = sample_dataset(size, seed=5)
    rows = [{"text": t, "label": data.label_names[y]} for t, y in zip(data.texts, data.labels, strict=True)]
    return write_jsonl(directory / "train.jsonl", rows)


def _job(model: Path, *, class_weights: str = "balanced", privacy: PrivacySettings | None = None) -> TrainJob:
    return TrainJob(
        model=str(model),
        training=TrainConfig(epochs=2, batch_size=8, learning_rate=0.05, max_length=16, class_weights=class_weights),
        privacy=privacy if privacy is not None else PrivacySettings(target_epsilon=TARGET, delta=DELTA),
        seed=0,
        device="cpu",
    )


@dataclass
class Run:
    result: JobResult
    prepared: PreparedData
    ledger: Path
    out: Path


def _run(job: TrainJob, data: Path, directory: Path, *, limit: float | None = 10.0) -> Run:
    captured: dict[str, Any] = {}
    ledger = directory / "ledger.jsonl"
    out = directory / "out"
    result = run_train_job(
        job,
        train_path=data,
        eval_path=None,
        out_dir=out,
        budget=BudgetSettings(ledger=ledger, max_epsilon=limit),
        on_plan=lambda prepared, _plan, _projection: captured.update(prepared=prepared),
    )
    return Run(result, captured["prepared"], ledger, out)


def _reserves(path: Path) -> list[ReserveRecord]:
    return sorted(PrivacyLedger(path).snapshot().reservations(), key=lambda r: r.seq)


@pytest.fixture(scope="module")
def balanced(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    directory = tmp_path_factory.mktemp("balanced")
    return _run(_job(tiny_model_dir), _data(directory), directory)


def test_histogram_is_reserved_and_committed_before_any_training(balanced: Run) -> None:
    snapshot = PrivacyLedger(balanced.ledger).snapshot()
    reserves = _reserves(balanced.ledger)
    histograms = [r for r in reserves if r.purpose == LABEL_HISTOGRAM]
    training = [r for r in reserves if r.purpose != LABEL_HISTOGRAM]
    assert len(histograms) == 1, reserves
    (histogram,) = histograms
    assert len(training) == balanced.result.summary["training"]["epochs_trained"] == 2
    assert histogram.seq < min(r.seq for r in training)
    # Committed, and its commit is also in the ledger before the first training reserve.
    assert histogram.event_id in snapshot.committed
    commit_seq = next(r.seq for r in snapshot.records if r.type == "commit" and r.event_id == histogram.event_id)
    assert commit_seq < min(r.seq for r in training)
    assert all(r.event_id in snapshot.committed for r in training)
    # Same run, round 0, the planned histogram mechanism (q = 1, one step, clip 1).
    assert {r.run_id for r in reserves} == {histogram.run_id}
    assert histogram.round == 0 and histogram.dp_event() == balanced.result.plan.histogram_event
    assert histogram.sample_rate == 1.0 and histogram.steps == 1 and histogram.max_grad_norm == 1.0
    assert balanced.result.summary["privacy"]["label_histogram_released"] is True
    # The summary names every reservation of the job, the histogram's first.
    assert balanced.result.summary["privacy"]["ledger"]["event_ids"] == [r.event_id for r in reserves]


def test_histogram_epsilon_counts_in_the_site_total_and_the_summary(balanced: Run) -> None:
    accountant = get_accountant("prv")
    reserves = _reserves(balanced.ledger)
    histogram = [e for r in reserves if r.purpose == LABEL_HISTOGRAM and (e := r.dp_event()) is not None]
    training = [e for r in reserves if r.purpose != LABEL_HISTOGRAM and (e := r.dp_event()) is not None]
    assert len(histogram) == 1 and len(training) == 2
    both = accountant.epsilon([*histogram, *training], delta=DELTA)
    alone = accountant.epsilon(training, delta=DELTA)
    assert both > alone

    ledger = PrivacyLedger(balanced.ledger)
    train = balanced.prepared.train
    dataset = ledger.dataset(train.texts, dataset_id="any id: records are what counts")
    spent = ledger.spent(dataset, delta=DELTA, accountant="prv")
    assert spent == pytest.approx(both, rel=1e-9)

    summary = json.loads((balanced.out / "summary.json").read_text())
    privacy = summary["privacy"]
    assert privacy["epsilon"] == pytest.approx(both, rel=1e-9)
    assert privacy["epsilon"] <= TARGET * 1.01
    assert privacy["planned_epsilon"] == pytest.approx(both, rel=1e-9)
    assert privacy["ledger"]["dataset_epsilon_after"] == pytest.approx(both, rel=1e-9)
    # A fresh ledger: before this job the data had spent nothing (the histogram is part of the job, not before it).
    assert privacy["ledger"]["dataset_epsilon_before"] == 0.0
    assert len(privacy["events"]) == 3 and privacy["events"][0] == histogram[0].model_dump()
    # The histogram's own share is what the plan gives it (5% of the target), not more.
    assert accountant.epsilon(histogram, delta=DELTA) <= 0.05 * TARGET * 1.01


@pytest.mark.parametrize(
    ("limit", "why"),
    [
        (0.01, "the histogram alone does not fit"),
        (1.0, "the histogram fits, the histogram and training do not"),
    ],
)
def test_refused_plan_reserves_nothing_and_writes_nothing(
    tiny_model_dir: Path, tmp_path: Path, limit: float, why: str
) -> None:
    job = _job(tiny_model_dir)
    accountant = get_accountant("prv")
    from common.training.job import plan_privacy, prepare_data

    data = _data(tmp_path)
    # The premise of each case, computed from the job's own plan.
    plan = plan_privacy(job, len(prepare_data(job, data, None).train), "train")
    assert plan.histogram_event is not None and plan.planned_epsilon is not None
    histogram_epsilon = accountant.epsilon([plan.histogram_event], delta=DELTA)
    assert (histogram_epsilon <= limit < plan.planned_epsilon) == (limit == 1.0), why

    ledger = tmp_path / "ledger.jsonl"
    out = tmp_path / "out"
    with pytest.raises(BudgetExhaustedError, match="Nothing was trained"):
        run_train_job(
            job,
            train_path=data,
            eval_path=None,
            out_dir=out,
            budget=BudgetSettings(ledger=ledger, max_epsilon=limit),
        )
    assert not ledger.exists() or not _reserves(ledger), "no reservation, not even the histogram's"
    assert not out.exists()


def test_refusal_leaves_an_existing_ledger_byte_for_byte(tiny_model_dir: Path, tmp_path: Path) -> None:
    from tests.helpers import synthetic_dataset

    ledger = tmp_path / "ledger.jsonl"
    # Some other dataset's history, so that the ledger exists before the refused job.
    PrivacyLedger(ledger).reserve(
        dataset=synthetic_dataset("other", 10),
        event=None,
        delta=DELTA,
        limit=None,
        run_id="earlier",
    )
    before = ledger.read_bytes()
    out = tmp_path / "out"
    with pytest.raises(BudgetExhaustedError):
        run_train_job(
            _job(tiny_model_dir),
            train_path=_data(tmp_path),
            eval_path=None,
            out_dir=out,
            budget=BudgetSettings(ledger=ledger, max_epsilon=1.0),
        )
    assert ledger.read_bytes() == before
    assert not out.exists()


def test_explicit_weights_of_the_wrong_count_are_refused_before_the_ledger(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"--class-weights gives 3 weights for 2 labels"):
        run_train_job(
            _job(tiny_model_dir, class_weights="1,2,3"),
            train_path=_data(tmp_path),
            eval_path=None,
            out_dir=out,
            budget=BudgetSettings(ledger=ledger),
        )
    assert not ledger.exists() or not _reserves(ledger)
    assert not out.exists()


def test_non_private_balanced_job_releases_no_histogram(tiny_model_dir: Path, tmp_path: Path) -> None:
    job = _job(tiny_model_dir, privacy=PrivacySettings(enabled=False))
    run = _run(job, _data(tmp_path), tmp_path, limit=None)
    reserves = _reserves(run.ledger)
    assert reserves and not [r for r in reserves if r.purpose == LABEL_HISTOGRAM]
    assert all(r.mechanism == "non-private" for r in reserves)
    assert run.result.plan.histogram_event is None
    summary = json.loads((run.out / "summary.json").read_text())
    assert summary["privacy"]["label_histogram_released"] is False and summary["privacy"]["events"] == []
