"""One local fine-tuning job, from data files to a saved adapter and summary (what ``fedtune train`` runs).

Order matters and is part of the contract: every input (output directory, ledger location, signing key, data,
labels, sizes, privacy parameters, model and the model's fit to the inputs) is validated and the noise level
calibrated BEFORE the budget is reserved, so bad input costs no privacy budget and leaves no partial output: what
can still fail after the reservation is only what no check can foresee (the machine, or training diverging).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from common.data.dataset import LabeledTexts
from common.data.dedupe import deduplicate
from common.data.readers import read_labeled_file
from common.data.sample import sample_dataset
from common.data.split import train_eval_split
from common.errors import ConfigError
from common.fileio import atomic_write_json, remove_created_directories
from common.privacy.budget import BudgetSettings
from common.privacy.histogram import release_label_histogram
from common.privacy.ledger import Reservation
from common.training.class_weights import ClassWeights, balanced_weights, parse_class_weights
from common.training.config import TrainJob
from common.training.epochs import BudgetProjection, EpochsOutcome, EpochSpend, train_epochs
from common.training.evaluation import EvalMetrics
from common.training.preflight import (
    check_ledger_location,
    check_model_takes,
    check_output_dir,
    check_signing_key_file,
)
from common.training.privacy_plan import PrivacyPlan, plan_privacy
from common.training.progress import ProgressCallback
from common.training.summary import ADAPTER_SUBDIR, SUMMARY_FILE, build_summary


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
class JobResult:
    """What a finished job reports."""

    out_dir: Path
    plan: PrivacyPlan
    outcome: EpochsOutcome
    metrics: EvalMetrics
    epsilon: float | None
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


def run_train_job(
    job: TrainJob,
    *,
    train_path: Path | None,
    eval_path: Path | None,
    out_dir: Path,
    budget: BudgetSettings,
    progress: ProgressCallback | None = None,
    on_plan: Callable[[PreparedData, PrivacyPlan, BudgetProjection], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> JobResult:
    """Validate, plan, train pass by pass; write the kept pass's adapter (``out_dir/adapter``) and ``summary.json``.

    Each pass is reserved, trained, committed and evaluated in turn (:mod:`common.training.epochs`).

    Everything that can be checked (output directory, ledger location, signing key, data, its coverage by the
    model, options, model) is checked, and the whole plan's spend projected against the limit, before the first
    pass is reserved; each reservation is durable before its pass's first step and committed before the adapter is
    written. ``on_plan(prepared, plan, projection)`` is called just before training starts; ``on_warning`` gets
    each preflight warning (e.g. data the tokenizer covers badly).
    An output directory this call created is removed again if the job fails before writing into it.
    """
    created = check_output_dir(out_dir)
    try:
        return _run(job, train_path, eval_path, out_dir, budget, progress, on_plan, on_warning or (lambda _: None))
    except BaseException:
        remove_created_directories(created)
        raise


def _class_weights(
    weights: ClassWeights, prepared: PreparedData, plan: PrivacyPlan, spend: EpochSpend
) -> tuple[tuple[float, ...] | None, Reservation | None]:
    """The loss's class weights; ``balanced`` ones from a DP histogram released (and charged) now, when private.

    Also returns the histogram's reservation (None when none was released).
    """
    if weights.mode == "explicit":
        return weights.weights, None
    if weights.mode != "balanced":
        return None, None
    labels = prepared.train.labels
    if plan.histogram_event is None:  # non-private job: its counts are not protected anyway
        counts = [float(labels.count(k)) for k in range(len(prepared.train.label_names))]
        return balanced_weights(counts), None
    assert plan.delta is not None
    histogram, reservation = release_label_histogram(
        spend.ledger,
        dataset=spend.dataset,
        labels=labels,
        num_classes=len(prepared.train.label_names),
        sigma=plan.histogram_event.noise_multiplier,
        delta=plan.delta,
        limit=spend.limit,
        accountant=spend.accountant,
        run_id=spend.run_id,
        round=0,
    )
    return balanced_weights(histogram.counts), reservation


def _run(
    job: TrainJob,
    train_path: Path | None,
    eval_path: Path | None,
    out_dir: Path,
    budget: BudgetSettings,
    progress: ProgressCallback | None,
    on_plan: Callable[[PreparedData, PrivacyPlan, BudgetProjection], None] | None,
    on_warning: Callable[[str], None],
) -> JobResult:
    import torch

    from common.data.coverage import check_coverage, measure_coverage
    from common.model.adapter import save_adapter
    from common.model.loading import load_base_classifier, load_tokenizer, resolve_base_model
    from common.model.lora import apply_lora, lora_a_fan_in, trainable_parameter_count
    from common.training.batches import TokenizedTexts
    from common.training.device import resolve_device
    from common.training.precision import check_precision

    check_ledger_location(budget.ledger)
    check_signing_key_file(budget.signing_key)
    ledger = budget.open_ledger()
    prepared = prepare_data(job, train_path, eval_path)
    device = resolve_device(job.device)
    check_precision(job.precision, device, private=job.privacy.enabled)  # e.g. fp16 under DP: refused, nothing spent
    ref = resolve_base_model(job.model)
    tokenizer = load_tokenizer(ref)
    max_length = job.training.max_length
    coverage = measure_coverage(prepared.train.texts, tokenizer, max_length=max_length, source=prepared.train.source)
    for line in check_coverage(coverage, strict=job.strict_data):
        on_warning(line)
    if job.seed is not None:
        torch.manual_seed(job.seed)  # head and LoRA initialisation
    model = apply_lora(load_base_classifier(ref, prepared.train.label_names, pooling=job.pooling), job.lora)
    trainable = trainable_parameter_count(model)
    plan = plan_privacy(
        job,
        len(prepared.train),
        prepared.train.source,
        trainable_parameters=trainable,
        lora_a_fan_in=lora_a_fan_in(model),
    )
    train_data = TokenizedTexts(prepared.train, tokenizer, max_length=max_length)
    eval_data = TokenizedTexts(prepared.eval, tokenizer, max_length=max_length)
    check_model_takes(model, (train_data, eval_data), max_length=max_length, private=plan.dp is not None)

    dataset = ledger.dataset(
        prepared.train.texts,
        dataset_id=str(train_path) if train_path is not None else prepared.source.source,
        source=(prepared.source.fingerprint, prepared.source.texts),
    )
    spend = EpochSpend(ledger, dataset, job.privacy.delta, job.privacy.accountant, budget.max_epsilon)
    weights = parse_class_weights(job.training.class_weights)
    if weights.mode == "explicit" and len(weights.weights) != len(prepared.train.label_names):
        raise ConfigError(
            f"--class-weights gives {len(weights.weights)} weights for {len(prepared.train.label_names)} labels "
            f"({', '.join(prepared.train.label_names)}): give one per label, in this order"
        )
    histogram = plan.histogram_event
    # The whole plan (histogram release, then every pass) must fit before anything is reserved.
    projection = spend.project(None if plan.event is None else [*([histogram] if histogram else []), plan.event])
    if on_plan is not None:
        on_plan(prepared, plan, projection)
    class_weights, histogram_reservation = _class_weights(weights, prepared, plan, spend)
    outcome = train_epochs(
        model,
        train_data,
        eval_data,
        plan=plan,
        spend=spend,
        job=job,
        device=device,
        progress=progress,
        class_weights=None if class_weights is None else torch.tensor(class_weights),
    )
    summary = build_summary(
        job, prepared, plan, outcome, budget, ref.name, trainable, coverage, histogram=histogram_reservation
    )
    save_adapter(model, out_dir / ADAPTER_SUBDIR, base_model_name=ref.name, max_length=max_length)
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    return JobResult(
        out_dir=out_dir,
        plan=plan,
        outcome=outcome,
        metrics=cast(EvalMetrics, outcome.metrics),
        epsilon=outcome.epsilon_after,
        summary=summary,
    )
