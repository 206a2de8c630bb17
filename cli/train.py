"""``fedtune train``: fine-tune a LoRA adapter on one site's data, privately by default."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli import options as opt
from cli.display import console, key_value_table, training_progress
from cli.train_generate import train_generate
from common.errors import ConfigError
from common.model.builtin import BUILTIN_MODEL_ID
from common.model.lora import LoraSettings
from common.model.task import resolve_task
from common.parsing import parse_settings
from common.privacy.budget import DEFAULT_MAX_EPSILON
from common.training.config import DEFAULT_DELTA, PrivacySettings, TrainConfig, TrainJob
from common.training.generate_config import DEFAULT_GENERATE_MAX_LENGTH
from common.training.selection import SelectionSettings

# Option defaults come from the settings models, so the CLI and the library cannot disagree.
_TRAIN = TrainConfig()
_LORA = LoraSettings()
_PRIVACY = PrivacySettings(enabled=False)
_JOB_FIELDS = TrainJob.model_fields
_SELECTION = SelectionSettings()

#: Where pydantic locates a problem -> the option the user typed.
TRAIN_FLAGS = {
    **opt.DATA_FLAGS,
    **opt.LORA_FLAGS,
    "training.epochs": "--epochs",
    "training.batch_size": "--batch-size",
    "training.physical_batch_size": "--physical-batch-size",
    "training.learning_rate": "--lr",
    "training.optimizer": "--optimizer",
    "training.lr_schedule": "--lr-schedule",
    "training.warmup_fraction": "--warmup-fraction",
    "training.class_weights": "--class-weights",
    "selection.metric": "--select-metric",
    "selection.patience": "--patience",
    "training.max_length": "--max-length",
    "eval_fraction": "--eval-fraction",
    "split_seed": "--split-seed",
    "seed": "--seed",
    "device": "--device",
    "precision": "--precision",
    "gradient_checkpointing": "--gradient-checkpointing",
    "pooling": "--pooling",
    "model": "--model",
}

if TYPE_CHECKING:
    from common.training.epochs import BudgetProjection
    from common.training.job import PreparedData
    from common.training.privacy_plan import PrivacyPlan


def train(
    out: opt.OutOpt,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Training data (CSV, TSV or JSON Lines). Default: the built-in sample."),
    ] = None,
    eval_data: Annotated[
        Path | None,
        typer.Option("--eval-data", help="Held-out data; default: a seeded split of --data (--eval-fraction)."),
    ] = None,
    model: opt.ModelOpt = BUILTIN_MODEL_ID,
    pooling: opt.PoolingOpt = _JOB_FIELDS["pooling"].default,
    epsilon: opt.EpsilonOpt = None,
    delta: opt.DeltaOpt = DEFAULT_DELTA,
    noise_multiplier: opt.NoiseOpt = None,
    max_grad_norm: opt.ClipOpt = _PRIVACY.max_grad_norm,
    accountant: opt.AccountantOpt = "prv",
    no_dp: opt.NoDpOpt = False,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Passes over the training data. Default: the recipe's.")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", help="Expected logical batch (Poisson sample rate = batch/N). Default: recipe's."),
    ] = None,
    physical_batch_size: Annotated[
        int, typer.Option("--physical-batch-size", help="Most examples on the device at once (memory bound).")
    ] = _TRAIN.physical_batch_size,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Learning rate of the optimizer. Default: the recipe's.")
    ] = None,
    lr_schedule: Annotated[
        str, typer.Option("--lr-schedule", help="constant, linear or cosine decay over all steps (after warm-up).")
    ] = _TRAIN.lr_schedule,
    warmup_fraction: Annotated[
        float, typer.Option("--warmup-fraction", help="Share of the steps that warm the learning rate up.")
    ] = _TRAIN.warmup_fraction,
    class_weights: Annotated[
        str,
        typer.Option(
            "--class-weights",
            help="none, balanced (from a DP-noised label histogram, charged to the ledger) or W1,W2,... per label.",
        ),
    ] = _TRAIN.class_weights,
    select_metric: Annotated[
        str | None,
        typer.Option(
            "--select-metric",
            help="Keep the epoch best by this metric on the evaluation split: accuracy, macro_f1 or loss "
            "(default: accuracy to classify, loss to generate).",
        ),
    ] = None,
    patience: Annotated[
        int, typer.Option("--patience", help="Stop after this many epochs without improvement (0: never).")
    ] = _SELECTION.patience,
    strict_data: Annotated[
        bool,
        typer.Option(
            "--strict-data/--lenient-data",
            help="Refuse (instead of warn about) data the tokenizer covers badly or --max-length cuts often.",
        ),
    ] = False,
    optimizer: Annotated[str, typer.Option("--optimizer", help="adamw or sgd.")] = _TRAIN.optimizer,
    max_length: Annotated[
        int | None,
        typer.Option("--max-length", help="Tokens kept per example (cut beyond). Default: 64 classify, 256 generate."),
    ] = None,
    task: Annotated[
        str,
        typer.Option(
            "--task",
            help="classify or generate (instruction -> response SFT of a causal LM). Default: from the model's config.",
        ),
    ] = "auto",
    prompt_column: Annotated[str, typer.Option("--prompt-column", help="generate: column of the prompts.")] = "prompt",
    response_column: Annotated[
        str, typer.Option("--response-column", help="generate: column of the responses.")
    ] = "response",
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="generate: most tokens a scored generation may add.")
    ] = 64,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", help="generate: padded tokens per physical batch (memory bound).")
    ] = 4096,
    lora_r: opt.LoraROpt = _LORA.r,
    lora_alpha: opt.LoraAlphaOpt = _LORA.alpha,
    lora_dropout: opt.LoraDropoutOpt = _LORA.dropout,
    lora_targets: opt.LoraTargetsOpt = None,
    ffa: opt.FfaOpt = None,
    text_column: opt.TextColumnOpt = opt.DATA_DEFAULTS.text_column,
    label_column: opt.LabelColumnOpt = opt.DATA_DEFAULTS.label_column,
    labels: opt.LabelsOpt = None,
    fmt: opt.FormatOpt = opt.DATA_DEFAULTS.format,
    eval_fraction: Annotated[
        float, typer.Option("--eval-fraction", help="Share held out for evaluation when no --eval-data.")
    ] = _JOB_FIELDS["eval_fraction"].default,
    split_seed: Annotated[int, typer.Option("--split-seed", help="Seed of the train/eval split.")] = _JOB_FIELDS[
        "split_seed"
    ].default,
    seed: opt.SeedOpt = None,
    device: opt.DeviceOpt = _JOB_FIELDS["device"].default,
    precision: opt.PrecisionOpt = _JOB_FIELDS["precision"].default,
    gradient_checkpointing: opt.GradientCheckpointingOpt = False,
    ledger: opt.LedgerOpt = None,
    max_epsilon: opt.MaxEpsilonOpt = str(DEFAULT_MAX_EPSILON),
    signing_key: opt.SigningKeyOpt = None,
) -> None:
    """Fine-tune a LoRA adapter with DP-SGD (labelled text, or prompt/response pairs with --task generate).

    Every run is charged to the dataset's entry in the privacy ledger (--ledger): training is refused, before it
    starts, when the dataset's total spend would pass --max-epsilon. Everything is validated before training
    starts; on bad input nothing is trained or written. The output
    directory receives adapter/ (load it with PeftModel.from_pretrained(base, OUT/adapter)) and summary.json
    (metrics and privacy spend). Evaluation metrics are not differentially private.
    """
    from common.training.job import run_train_job

    opt.require_utf8({"--data": data, "--eval-data": eval_data, "--ledger": ledger})
    # The settings both tasks share; each adds its own (class weights, its default max length).
    training = {
        "epochs": epochs,
        "batch_size": batch_size,
        "physical_batch_size": physical_batch_size,
        "learning_rate": lr,
        "lr_schedule": lr_schedule,
        "warmup_fraction": warmup_fraction,
        "optimizer": optimizer,
    }
    privacy = opt.privacy_settings(
        no_dp=no_dp,
        epsilon=epsilon,
        delta=delta,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        accountant=accountant,
    )
    if resolve_task(task, model) == "generate":
        values = {
            "model": model,
            "data": {"format": fmt, "prompt_column": prompt_column, "response_column": response_column},
            "lora": opt.lora_values(
                r=lora_r, alpha=lora_alpha, dropout=lora_dropout, targets=lora_targets, ffa=bool(ffa)
            ),
            "training": {**training, "max_length": max_length or DEFAULT_GENERATE_MAX_LENGTH},
            "privacy": privacy,
            "max_tokens": max_tokens,
            "max_new_tokens": max_new_tokens,
            "eval_fraction": eval_fraction,
            "split_seed": split_seed,
            "seed": seed,
            "device": device,
            "precision": precision,
            "gradient_checkpointing": gradient_checkpointing,
            "selection": {"metric": select_metric or "loss", "patience": patience},
        }
        budget = opt.budget_settings(ledger=ledger, max_epsilon=max_epsilon, signing_key=signing_key)
        train_generate(values, budget=budget, data=data, eval_data=eval_data, out=out, names=TRAIN_FLAGS)
        return
    if gradient_checkpointing:
        raise ConfigError("--gradient-checkpointing applies to --task generate (causal language models) only")
    job = parse_settings(
        TrainJob,
        {
            "model": model,
            "pooling": pooling,
            "data": opt.data_values(fmt=fmt, text_column=text_column, label_column=label_column, labels=labels),
            "lora": opt.lora_values(
                r=lora_r,
                alpha=lora_alpha,
                dropout=lora_dropout,
                targets=lora_targets,
                ffa=ffa,
            ),
            "training": {**training, "class_weights": class_weights, "max_length": max_length or _TRAIN.max_length},
            "privacy": privacy,
            "eval_fraction": eval_fraction,
            "split_seed": split_seed,
            "seed": seed,
            "device": device,
            "precision": precision,
            "selection": {"metric": select_metric or _SELECTION.metric, "patience": patience},
            "strict_data": strict_data,
        },
        context="option",
        names=TRAIN_FLAGS,
    )
    budget = opt.budget_settings(ledger=ledger, max_epsilon=max_epsilon, signing_key=signing_key)

    def show_plan(prepared: PreparedData, plan: PrivacyPlan, projection: BudgetProjection) -> None:
        console.print(plan.recipe.describe(plan.recipe_inputs))
        rows: list[tuple[str, object]] = [
            ("train examples", len(prepared.train)),
            ("eval examples", len(prepared.eval)),
            ("epochs", plan.epochs),
            ("batch size", plan.epoch.batch_size),
            ("learning rate", plan.training.learning_rate),
            ("steps", plan.steps.steps),
            ("sample rate q", plan.steps.sample_rate),
            ("precision", job.precision),
        ]
        if plan.dp is not None:
            rows += [
                ("noise multiplier sigma", plan.dp.noise_multiplier),
                ("clip C", plan.dp.max_grad_norm),
                (f"planned epsilon ({plan.accountant})", plan.planned_epsilon),
                ("delta", plan.delta),
            ]
        else:
            console.print("[bold yellow]warning:[/] training WITHOUT differential privacy (--no-dp)")
        rows += [
            ("dataset spent before", projection.before),
            ("dataset spent after (planned)", projection.after),
            ("dataset limit", budget.max_epsilon),
            ("ledger", str(budget.ledger)),
        ]
        console.print(key_value_table("Plan", rows))
        progress.start(plan.steps.steps)

    with training_progress("training") as progress:
        result = run_train_job(
            job,
            train_path=data,
            eval_path=eval_data,
            out_dir=out,
            budget=budget,
            progress=progress,
            on_plan=show_plan,
            on_warning=lambda line: console.print(f"[bold yellow]warning:[/] {line}"),
        )
    m = result.metrics
    rows: list[tuple[str, object]] = [
        ("accuracy", m.accuracy),
        ("macro F1", m.macro_f1),
        ("ROC-AUC", m.roc_auc),
        ("eval loss", m.loss),
        ("epsilon (this run)", result.epsilon),
        ("dataset epsilon (ledger)", result.outcome.epsilon_after),
        ("dataset limit", budget.max_epsilon),
        ("delta", result.plan.delta),
        ("noise multiplier sigma", result.plan.dp.noise_multiplier if result.plan.dp else None),
        ("steps", result.outcome.steps),
        ("empty batches", result.outcome.empty_batches),
        ("seconds", result.outcome.seconds),
        ("kept epoch", f"{result.outcome.kept_epoch} of {len(result.outcome.history)} (by {job.selection.metric})"),
    ]
    console.print(key_value_table("Result", rows))
    if result.outcome.stop_reason:
        console.print(result.outcome.stop_reason)
    console.print(f"adapter: {out / 'adapter'}   summary: {out / 'summary.json'}")
