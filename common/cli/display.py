"""Rich rendering shared by commands: a training progress bar and result tables."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from common.training.progress import ProgressCallback

console = Console()


@contextmanager
def training_progress(description: str, total: int) -> Iterator[ProgressCallback]:
    """A live progress bar; yields the callback the trainer calls after each step."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps  loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, loss="-")
        smoothed: list[float] = []

        def update(done: int, planned: int, loss: float | None) -> None:
            if loss is not None:
                smoothed.append(loss)
                del smoothed[:-20]
            shown = f"{sum(smoothed) / len(smoothed):.4f}" if smoothed else "-"
            progress.update(task, completed=done, total=planned, loss=shown)

        yield update


def fmt(value: Any, digits: int = 4) -> str:
    """Human-readable cell: floats to ``digits`` significant digits, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def key_value_table(title: str, rows: Sequence[tuple[str, Any]]) -> Table:
    """A two-column table."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in rows:
        table.add_row(key, fmt(value))
    return table
