"""``summary.json`` of a ``fedtune train`` job: what was trained, how, what it spent and how well it does.

The summary is the site's own file (it never leaves the site): it may name the local data's sizes and label counts.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING, Any

from common import __version__

if TYPE_CHECKING:
    from common.data.coverage import Coverage
    from common.data.dataset import LabeledTexts
    from common.privacy.budget import BudgetSettings
    from common.privacy.ledger import Reservation
    from common.training.config import TrainJob
    from common.training.epochs import EpochsOutcome
    from common.training.job import PreparedData
    from common.training.privacy_plan import PrivacyPlan

ADAPTER_SUBDIR = "adapter"
SUMMARY_FILE = "summary.json"
#: Said wherever a number computed on the evaluation split is reported.
EVAL_NOTE = (
    "evaluation metrics, and the choice of the kept epoch, are computed on held-out private data and are not "
    "covered by the differential privacy guarantee"
)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _dataset_entry(dataset: LabeledTexts) -> dict[str, Any]:
    return {
        "source": dataset.source,
        "examples": len(dataset),
        "label_counts": dataset.label_counts(),
        "fingerprint": dataset.fingerprint,
    }


def _clean(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def build_summary(
    job: TrainJob,
    prepared: PreparedData,
    plan: PrivacyPlan,
    outcome: EpochsOutcome,
    budget: BudgetSettings,
    base_model: str,
    trainable: int,
    coverage: Coverage,
    *,
    histogram: Reservation | None = None,
) -> dict[str, Any]:
    """The summary as a JSON-ready mapping; ``histogram`` is the job's label-histogram reservation, if any."""
    from common.privacy.accountant import get_accountant

    private = plan.dp is not None
    limit = budget.max_epsilon
    spent = outcome.epsilon_after
    reservations = [*([histogram] if histogram is not None else []), *outcome.reservations]
    first = reservations[0]  # the job's first reservation: its "before" is the spend before the job
    events = [*([plan.histogram_event] if plan.histogram_event is not None else []), *outcome.events]
    epsilon = None
    if plan.delta is not None:
        epsilon = get_accountant(plan.accountant).epsilon(events, delta=plan.delta)
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
            "coverage": {
                "examples_checked": coverage.examples_checked,
                "unknown_token_share": coverage.unknown_share,
                "truncated_share": coverage.truncated_share,
                "max_length": coverage.max_length,
            },
        },
        "recipe": {
            "line": plan.recipe.describe(plan.recipe_inputs),
            "given": list(plan.recipe.explicit),
        },
        "privacy": {
            "differentially_private": private,
            "accountant": plan.accountant if private else None,
            "epsilon": epsilon,
            "planned_epsilon": plan.planned_epsilon,
            "delta": plan.delta,
            "target_epsilon": job.privacy.target_epsilon if private else None,
            "noise_multiplier": plan.dp.noise_multiplier if plan.dp else None,
            "sample_rate": plan.epoch.sample_rate if private else None,
            "steps": outcome.steps if private else None,
            "max_grad_norm": plan.dp.max_grad_norm if plan.dp else None,
            "events": [event.model_dump() for event in events],
            "label_histogram_released": plan.histogram_event is not None,
            "ledger": {
                "path": str(budget.ledger),
                "event_ids": [r.event_id for r in reservations],
                "dataset_fingerprint": first.record.dataset_fingerprint,
                "record_set": first.record.record_set,
                # Per record: the most exposed trained record's epsilon, composed over every event on it.
                "dataset_epsilon_before": _finite(first.epsilon_before),
                "dataset_epsilon_after": _finite(spent),
                "limit": limit,
                "remaining": None if limit is None or spent is None else max(0.0, limit - spent),
            },
            "note": EVAL_NOTE,
        },
        "training": {
            **plan.training.model_dump(),
            "seed": job.seed,
            "device": job.device,
            "epochs_planned": plan.epochs,
            "epochs_trained": len(outcome.history),
            "kept_epoch": outcome.kept_epoch,
            "select_metric": job.selection.metric,
            "patience": job.selection.patience,
            "stop_reason": outcome.stop_reason,
            "steps": outcome.steps,
            "examples_seen": outcome.examples_seen,
            "empty_batches": outcome.empty_batches,
            "seconds": round(outcome.seconds, 3),
            "final_train_loss": outcome.final_loss,
        },
        "lora": job.lora.model_dump(),
        "trainable_parameters": trainable,
        "metrics": _clean(outcome.metrics.to_dict()),
        "history": [_clean(m.to_dict()) for m in outcome.history],
    }
