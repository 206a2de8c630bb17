"""``fedtune train --task generate``: the generative branch of ``fedtune train`` (instruction -> response SFT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cli.display import console, key_value_table, training_progress
from common.errors import ConfigError
from common.parsing import parse_settings
from common.privacy.budget import BudgetSettings
from common.training.generate_config import GenerateJob

TASKS = ("auto", "classify", "generate")


def resolve_task(task: str, model: str) -> str:
    """``classify`` or ``generate``; ``auto`` asks the model's config (a causal LM generates)."""
    if task not in TASKS:
        raise ConfigError(f"--task must be one of {', '.join(TASKS)}; got {task!r}")
    if task != "auto":
        return task
    from common.data.spec import utf8_problem
    from common.model.causal import is_causal_lm

    if utf8_problem(model) is not None:
        return "classify"  # the job's own validation names the bad --model
    from common.model.loading import resolve_base_model

    return "generate" if is_causal_lm(resolve_base_model(model)) else "classify"


def train_generate(
    values: dict[str, Any],
    *,
    budget: BudgetSettings,
    data: Path | None,
    eval_data: Path | None,
    out: Path,
    names: dict[str, str],
) -> None:
    """Parse ``values`` into a GenerateJob, run it with progress, print the plan and the result."""
    from common.training.generate_job import run_generate_job
    from common.training.job import PrivacyPlan

    job = parse_settings(GenerateJob, values, context="option", names=names)

    with training_progress("training") as progress:

        def show_plan(plan: PrivacyPlan, recipe_line: str) -> None:
            console.print(recipe_line)
            if plan.dp is None:
                console.print("[bold yellow]warning:[/] training WITHOUT differential privacy (--no-dp)")
            progress.start(plan.steps.steps)

        result = run_generate_job(
            job,
            train_path=data,
            eval_path=eval_data,
            out_dir=out,
            budget=budget,
            progress=progress,
            on_plan=show_plan,
            on_warning=lambda line: console.print(f"[bold yellow]warning:[/] {line}"),
        )
    metrics = result.summary["metrics"]
    rows: list[tuple[str, object]] = [
        ("eval loss", metrics.get("loss")),
        ("perplexity", metrics.get("perplexity")),
        ("ROUGE-L", metrics.get("rouge_l")),
        ("BLEU", metrics.get("bleu")),
        ("exact match", metrics.get("exact_match")),
        ("epsilon (this run)", result.summary["privacy"]["epsilon"]),
        ("dataset epsilon (ledger)", result.outcome.epsilon_after),
        ("dataset limit", budget.max_epsilon),
        ("steps", result.outcome.steps),
        ("kept epoch", f"{result.outcome.kept_epoch} of {len(result.outcome.history)} (by {job.selection.metric})"),
    ]
    console.print(key_value_table("Result", rows))
    console.print(f"adapter: {out / 'adapter'}   summary: {out / 'summary.json'}")
