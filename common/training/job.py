"""One local fine-tuning job, from data files to a saved adapter and summary (what ``fedtune train`` runs).

Order matters and is part of the contract: every input (output directory, ledger location, signing key, data,
labels, sizes, privacy parameters, model and the model's fit to the inputs) is validated and the noise level
calibrated BEFORE the budget is reserved, so bad input costs no privacy budget and leaves no partial output: what
can still fail after the reservation is only what no check can foresee (the machine, or training diverging).
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import __version__
from common.data.dataset import LabeledTexts
from common.data.dedupe import deduplicate
from common.data.readers import read_labeled_file
from common.data.sample import sample_dataset
from common.data.split import train_eval_split
from common.fileio import atomic_write_json, remove_created_directories
from common.privacy.accountant import get_accountant
from common.privacy.budget import BudgetSettings
from common.privacy.calibration import calibrate_noise_multiplier
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import Reservation
from common.training.batches import StepPlan, plan_steps
from common.training.config import TrainJob
from common.training.evaluation import EvalMetrics
from common.training.preflight import (
    check_ledger_location,
    check_model_takes,
    check_output_dir,
    check_signing_key_file,
)
from common.training.progress import ProgressCallback
from common.training.trainer import DpSgdParams, TrainOutcome

ADAPTER_SUBDIR = "adapter"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class PreparedData:
    """The training and evaluation sets, and the whole file the training set came from (as read).

    ``train`` holds distinct records only (``duplicates`` were dropped, see :mod:`common.data.dedupe`): DP-SGD's
    guarantee, and the ledger's per-record accounting, are per record.
    """

    train: LabeledTexts
    eval: LabeledTexts
    source: LabeledTexts
    duplicates: int

    @property
    def source_fingerprint(self) -> str:
        """The v1 content fingerprint of the whole source file (reported; legacy ledgers were keyed by it)."""
        return self.source.fingerprint


@dataclass(frozen=True)
class PrivacyPlan:
    """The concrete privacy of a job, fixed before training: sigma, q, steps, clip, delta (None when non-private)."""

    steps: StepPlan
    dp: DpSgdParams | None
    delta: float | None
    accountant: str
    planned_epsilon: float | None
    event: DpSgdEvent | None


@dataclass(frozen=True)
class JobResult:
    """What a finished job reports."""

    out_dir: Path
    plan: PrivacyPlan
    outcome: TrainOutcome
    metrics: EvalMetrics
    epsilon: float | None
    reservation: Reservation
    summary: dict[str, Any]


def prepare_data(job: TrainJob, train_path: Path | None, eval_path: Path | None) -> PreparedData:
    """Read and validate the data (the built-in sample when ``train_path`` is None); split off eval if needed.

    Duplicate texts are dropped before the split. The ledger is charged for exactly the records trained on (the
    train split), per record: another split seed trains other records, and each is charged when it is trained.
    """
    source = read_labeled_file(train_path, job.data) if train_path is not None else sample_dataset()
    distinct, duplicates = deduplicate(source)
    if eval_path is not None:
        evaluation = read_labeled_file(eval_path, job.data, label_names=source.label_names)
        return PreparedData(train=distinct, eval=evaluation, source=source, duplicates=duplicates)
    train, evaluation = train_eval_split(distinct, eval_fraction=job.eval_fraction, seed=job.split_seed)
    return PreparedData(train=train, eval=evaluation, source=source, duplicates=duplicates)


def plan_privacy(job: TrainJob, num_examples: int, source: str) -> PrivacyPlan:
    """Steps, sample rate and (calibrated) noise for training on ``num_examples`` examples."""
    steps = plan_steps(
        num_examples=num_examples,
        batch_size=job.training.batch_size,
        epochs=job.training.epochs,
        source=source,
    )
    privacy = job.privacy
    if not privacy.enabled:
        return PrivacyPlan(
            steps=steps, dp=None, delta=None, accountant=privacy.accountant, planned_epsilon=None, event=None
        )
    accountant = get_accountant(privacy.accountant)
    sigma = privacy.noise_multiplier
    if sigma is None:
        assert privacy.target_epsilon is not None  # guaranteed by PrivacySettings' validator
        sigma = calibrate_noise_multiplier(
            target_epsilon=privacy.target_epsilon,
            delta=privacy.delta,
            sample_rate=steps.sample_rate,
            steps=steps.steps,
            max_grad_norm=privacy.max_grad_norm,
            accountant=accountant,
        )
    dp = DpSgdParams(noise_multiplier=sigma, max_grad_norm=privacy.max_grad_norm)
    planned = DpSgdEvent(
        noise_multiplier=sigma,
        sample_rate=steps.sample_rate,
        steps=steps.steps,
        max_grad_norm=privacy.max_grad_norm,
    )
    epsilon = accountant.epsilon([planned], delta=privacy.delta)
    return PrivacyPlan(
        steps=steps, dp=dp, delta=privacy.delta, accountant=accountant.name, planned_epsilon=epsilon, event=planned
    )


def run_train_job(
    job: TrainJob,
    *,
    train_path: Path | None,
    eval_path: Path | None,
    out_dir: Path,
    budget: BudgetSettings,
    progress: ProgressCallback | None = None,
    on_plan: Callable[[PreparedData, PrivacyPlan, Reservation], None] | None = None,
) -> JobResult:
    """Validate, plan, reserve budget, train, commit, evaluate, and write ``out_dir/adapter`` and ``summary.json``.

    Everything that can be checked (output directory, ledger location, signing key, data, options, model) is
    checked before the budget is reserved; the reservation is durable before the first training step and committed
    before the adapter is written. ``on_plan(prepared, plan, reservation)`` is called just before training starts.
    An output directory this call created is removed again if the job fails before writing into it.
    """
    created = check_output_dir(out_dir)
    try:
        return _run(job, train_path, eval_path, out_dir, budget, progress, on_plan)
    except BaseException:
        remove_created_directories(created)
        raise


def _run(
    job: TrainJob,
    train_path: Path | None,
    eval_path: Path | None,
    out_dir: Path,
    budget: BudgetSettings,
    progress: ProgressCallback | None,
    on_plan: Callable[[PreparedData, PrivacyPlan, Reservation], None] | None,
) -> JobResult:
    import torch

    from common.model.adapter import save_adapter
    from common.model.loading import load_base_classifier, load_tokenizer, resolve_base_model
    from common.model.lora import apply_lora, trainable_parameter_count
    from common.training.batches import TokenizedTexts
    from common.training.device import resolve_device
    from common.training.evaluation import evaluate
    from common.training.trainer import train_adapter

    check_ledger_location(budget.ledger)
    check_signing_key_file(budget.signing_key)
    ledger = budget.open_ledger()
    prepared = prepare_data(job, train_path, eval_path)
    plan = plan_privacy(job, len(prepared.train), prepared.train.source)
    device = resolve_device(job.device)
    ref = resolve_base_model(job.model)
    tokenizer = load_tokenizer(ref)
    if job.seed is not None:
        torch.manual_seed(job.seed)  # head and LoRA initialisation
    model = apply_lora(load_base_classifier(ref, prepared.train.label_names, pooling=job.pooling), job.lora)
    train_data = TokenizedTexts(prepared.train, tokenizer, max_length=job.training.max_length)
    eval_data = TokenizedTexts(prepared.eval, tokenizer, max_length=job.training.max_length)
    check_model_takes(model, (train_data, eval_data), max_length=job.training.max_length, private=plan.dp is not None)

    dataset = ledger.dataset(
        prepared.train.texts,
        dataset_id=str(train_path) if train_path is not None else prepared.source.source,
        source=(prepared.source.fingerprint, prepared.source.texts),
    )
    reservation = ledger.reserve(
        dataset=dataset,
        event=plan.event,
        delta=job.privacy.delta,
        limit=budget.max_epsilon,
        accountant=job.privacy.accountant,
        run_id=str(uuid.uuid4()),
        round=0,
    )
    if on_plan is not None:
        on_plan(prepared, plan, reservation)
    outcome = train_adapter(
        model,
        train_data,
        config=job.training,
        plan=plan.steps,
        dp=plan.dp,
        device=device,
        seed=job.seed,
        progress=progress,
    )
    if outcome.event != plan.event:  # the trainer must have done exactly what was reserved
        raise RuntimeError(f"trained {outcome.event} but reserved {plan.event}")
    ledger.commit(reservation, examples_seen=outcome.examples_seen, empty_batches=outcome.empty_batches)

    metrics = evaluate(model, eval_data, batch_size=job.training.eval_batch_size, device=device)
    summary = _summary(
        job, prepared, plan, outcome, metrics, reservation, budget, ref.name, trainable_parameter_count(model)
    )
    save_adapter(model, out_dir / ADAPTER_SUBDIR, base_model_name=ref.name)
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    return JobResult(
        out_dir=out_dir,
        plan=plan,
        outcome=outcome,
        metrics=metrics,
        epsilon=plan.planned_epsilon,
        reservation=reservation,
        summary=summary,
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _dataset_entry(dataset: LabeledTexts) -> dict[str, Any]:
    return {
        "source": dataset.source,
        "examples": len(dataset),
        "label_counts": dataset.label_counts(),
        "fingerprint": dataset.fingerprint,
    }


def _summary(
    job: TrainJob,
    prepared: PreparedData,
    plan: PrivacyPlan,
    outcome: TrainOutcome,
    metrics: EvalMetrics,
    reservation: Reservation,
    budget: BudgetSettings,
    base_model: str,
    trainable: int,
) -> dict[str, Any]:
    event = outcome.event
    limit = budget.max_epsilon
    spent = reservation.epsilon_after
    return {
        "fedtune_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "base_model": base_model,
        "adapter_dir": ADAPTER_SUBDIR,
        "labels": list(prepared.train.label_names),
        "data": {
            "source_fingerprint": prepared.source_fingerprint,
            "duplicates_dropped": prepared.duplicates,
            "train": _dataset_entry(prepared.train),
            "eval": _dataset_entry(prepared.eval),
        },
        "privacy": {
            "differentially_private": event is not None,
            "accountant": plan.accountant if event is not None else None,
            "epsilon": plan.planned_epsilon,
            "delta": plan.delta,
            "target_epsilon": job.privacy.target_epsilon if event is not None else None,
            "noise_multiplier": event.noise_multiplier if event else None,
            "sample_rate": event.sample_rate if event else None,
            "steps": event.steps if event else None,
            "max_grad_norm": event.max_grad_norm if event else None,
            "events": [event.model_dump()] if event else [],
            "ledger": {
                "path": str(budget.ledger),
                "event_id": reservation.event_id,
                "dataset_fingerprint": reservation.record.dataset_fingerprint,
                "record_set": reservation.record.record_set,
                # Per record: the most exposed trained record's epsilon, composed over every event on it.
                "dataset_epsilon_before": _finite(reservation.epsilon_before),
                "dataset_epsilon_after": _finite(spent),
                "limit": limit,
                "remaining": None if limit is None else max(0.0, limit - spent),
            },
            "note": "evaluation metrics are computed on held-out data and are not differentially private",
        },
        "training": {
            **job.training.model_dump(),
            "seed": job.seed,
            "device": job.device,
            "steps": outcome.steps,
            "examples_seen": outcome.examples_seen,
            "empty_batches": outcome.empty_batches,
            "seconds": round(outcome.seconds, 3),
            "final_train_loss": outcome.final_loss,
        },
        "lora": job.lora.model_dump(),
        "trainable_parameters": trainable,
        "metrics": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.to_dict().items()},
    }
