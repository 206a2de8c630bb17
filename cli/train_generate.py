"""``fedtune train --task generate``: the generative branch of ``fedtune train`` (instruction -> response SFT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cli.display import console, key_value_table, training_progress
from common.parsing import parse_settings
from common.privacy.budget import BudgetSettings
from common.training.generate_config import GenerateJob


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
    from common.training.privacy_plan import PrivacyPlan

    job = parse_settings(GenerateJob, values, context="option", names=names)

    with training_progress("training") as progress:

        def show_plan(plan: PrivacyPlan, recipe_line: str) -> None:
            console.print(recipe_line)
            if job.precision != "fp32" or job.gradient_checkpointing:
                checkpointing = ", gradient checkpointing" if job.gradient_checkpointing else ""
                console.print(f"precision {job.precision}{checkpointing}")
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
