"""``fedtune train``'s training loop: pass by pass, each pass its own ledger event, keeping the best pass.

Every pass (epoch) is reserved in the ledger before its first step and committed after its last, as one DP-SGD
event; passes of the same sigma and q compose exactly as the single event of the whole plan (the accountant merges
them), so splitting costs nothing, and a job that stops early (``--patience``) has spent only the passes it
trained. Before the first pass the WHOLE plan is projected against the limit: a job is refused before training,
never cut off half way by its own budget.

After each pass the adapter is evaluated on the job's evaluation split and the best pass is kept by the selection
metric (:mod:`common.training.selection`). That split is the site's own private data: choosing on it is an adaptive
use of the data that the DP guarantee does not cover (the summary says so), as with any held-out tuning. The
learning-rate schedule and the optimiser's state run on across passes, exactly as in one uninterrupted run.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from common.errors import BudgetExhaustedError
from common.model.adapter import load_adapter_state
from common.privacy.accountant import AccountantName
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import DatasetRef, PrivacyLedger, Reservation
from common.training.evaluation import evaluate
from common.training.schedule import LrSchedule
from common.training.selection import RoundSelector
from common.training.trainer import train_adapter

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

    from common.training.batches import TokenizedTexts
    from common.training.config import TrainJob
    from common.training.generate_config import GenerateJob
    from common.training.privacy_plan import PrivacyPlan
    from common.training.progress import ProgressCallback
    from common.training.task import TrainData, TrainTask


@dataclass(frozen=True)
class BudgetProjection:
    """The most exposed record's epsilon before the job and after its whole plan, and the limit."""

    before: float
    after: float
    limit: float | None


class EpochSpend:
    """The job's dataset in its ledger: projects the plan, reserves and commits each pass (one run id)."""

    def __init__(
        self,
        ledger: PrivacyLedger,
        dataset: DatasetRef,
        delta: float,
        accountant: AccountantName,
        limit: float | None,
    ) -> None:
        self.ledger, self.dataset, self.delta, self.accountant, self.limit = ledger, dataset, delta, accountant, limit
        self.run_id = str(uuid.uuid4())

    def project(self, plan: list[DpSgdEvent] | None) -> BudgetProjection:
        """The spend after the whole ``plan``; raises BudgetExhaustedError (nothing written) if it passes the limit.

        ``plan``: every event the job will reserve, in order (None: a non-private job).
        """
        before, after = self.ledger.projected(self.dataset, events=plan, delta=self.delta, accountant=self.accountant)
        if self.limit is not None and after > self.limit:
            cost = "an infinite epsilon (no privacy)" if plan is None else f"epsilon {after:.4g}"
            raise BudgetExhaustedError(
                f"privacy budget exhausted for dataset {self.dataset.dataset_id} ({self.dataset.num_examples} "
                f"records): its most exposed records have spent epsilon {before:.4g} at delta {self.delta:g}; this "
                f"job would bring them to {cost}, over the limit {self.limit:g}. Nothing was trained."
            )
        return BudgetProjection(before=before, after=after, limit=self.limit)

    def reserve(self, event: DpSgdEvent | None, epoch: int) -> Reservation:
        """Reserve pass ``epoch`` (1-based), durable before it trains."""
        return self.ledger.reserve(
            dataset=self.dataset,
            event=event,
            delta=self.delta,
            limit=self.limit,
            accountant=self.accountant,
            run_id=self.run_id,
            round=epoch,
        )


class EpochMetrics(Protocol):
    """A pass's evaluation (classification's EvalMetrics, a causal LM's loss and perplexity)."""

    def to_dict(self) -> dict[str, Any]:
        """Metric name -> value (None: not computed)."""
        ...


@dataclass
class EpochsOutcome:
    """What the passes did: the kept pass and its metrics, every pass's metrics, events and counts."""

    metrics: EpochMetrics
    kept_epoch: int
    history: list[EpochMetrics] = field(default_factory=list)
    reservations: list[Reservation] = field(default_factory=list)
    events: list[DpSgdEvent] = field(default_factory=list)
    steps: int = 0
    examples_seen: int = 0
    empty_batches: int = 0
    seconds: float = 0.0
    final_loss: float | None = None
    stop_reason: str | None = None

    @property
    def epsilon_after(self) -> float | None:
        """The most exposed record's epsilon after the last pass (None if no pass ran)."""
        return self.reservations[-1].epsilon_after if self.reservations else None


def epoch_seed(seed: int | None, epoch: int) -> int | None:
    """A distinct seed per pass (each pass must sample and add noise afresh); None stays None (OS entropy)."""
    if seed is None:
        return None
    digest = hashlib.sha256(f"fedtune-epoch-seed\x00{seed}\x00{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 2


def train_epochs(
    model: PeftModel,
    train_data: TrainData,
    eval_data: TokenizedTexts | None,
    *,
    plan: PrivacyPlan,
    spend: EpochSpend,
    job: TrainJob | GenerateJob,
    device: torch.device,
    progress: ProgressCallback | None = None,
    class_weights: torch.Tensor | None = None,
    task: TrainTask | None = None,
    evaluate_fn: Callable[[], Any] | None = None,
    gradient_checkpointing: bool = False,
) -> EpochsOutcome:
    """Train ``plan.epochs`` passes (stopping early by ``job.selection``); the kept pass's adapter ends in ``model``.

    ``task`` is the trainer's task (None: classification); ``evaluate_fn`` evaluates the model after a pass and
    returns metrics with ``to_dict()`` (None: classification metrics on ``eval_data``). Every pass trains in
    ``job.precision``, with gradient checkpointing when ``gradient_checkpointing``.
    """
    training = plan.training
    schedule = LrSchedule.over(training.lr_schedule, plan.steps.steps, training.warmup_fraction)
    selector = RoundSelector(job.selection, where="the evaluation split (not covered by DP)", unit="epoch")
    outcome: EpochsOutcome | None = None
    optimizer_state: dict[str, Any] | None = None

    def overall(step: int, _total: int, loss: float | None) -> None:
        if progress is not None:
            progress(done + step, plan.steps.steps, loss)

    for epoch in range(1, plan.epochs + 1):
        done = (epoch - 1) * plan.epoch.steps
        reservation = spend.reserve(plan.epoch_event, epoch)
        result = train_adapter(
            model,
            train_data,
            config=training,
            plan=plan.epoch,
            dp=plan.dp,
            device=device,
            seed=epoch_seed(job.seed, epoch),
            progress=overall,
            schedule=schedule,
            start_step=done,
            optimizer_state=optimizer_state,
            class_weights=class_weights,
            task=task,
            precision=job.precision,
            gradient_checkpointing=gradient_checkpointing,
        )
        if result.event != plan.epoch_event:  # the trainer must have done exactly what was reserved
            raise RuntimeError(f"trained {result.event} but reserved {plan.epoch_event}")
        spend.ledger.commit(reservation, examples_seen=result.examples_seen, empty_batches=result.empty_batches)
        optimizer_state = result.optimizer_state
        if evaluate_fn is not None:
            metrics: EpochMetrics = evaluate_fn()
        else:
            assert eval_data is not None
            metrics = evaluate(model, eval_data, batch_size=training.eval_batch_size, device=device)
        selector.observe(epoch, metrics.to_dict(), result.adapter)
        if outcome is None:
            outcome = EpochsOutcome(metrics=metrics, kept_epoch=epoch)
        outcome.history.append(metrics)
        outcome.reservations.append(reservation)
        if result.event is not None:
            outcome.events.append(result.event)
        outcome.steps += result.steps
        outcome.examples_seen += result.examples_seen
        outcome.empty_batches += result.empty_batches
        outcome.seconds += result.seconds
        outcome.final_loss = result.final_loss
        outcome.stop_reason = selector.stop_reason(epoch)
        if outcome.stop_reason is not None:
            break
    assert outcome is not None  # plan.epochs >= 1
    best = selector.state
    if best.best_round is not None and best.best_adapter is not None:
        load_adapter_state(model, best.best_adapter)
        return replace(outcome, kept_epoch=best.best_round, metrics=outcome.history[best.best_round - 1])
    # No pass had a finite metric (e.g. an empty evaluation split): the last pass's adapter is the model's now.
    return replace(outcome, kept_epoch=len(outcome.history), metrics=outcome.history[-1])
