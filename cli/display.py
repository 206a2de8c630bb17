"""Rich rendering shared by commands: a training progress bar and result tables."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

# Output that is not a terminal (a file, a pipe, CI logs) gets a fixed, wide layout instead of rich's 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
_err_console = Console(stderr=True)


def err_console_warning(message: str) -> None:
    """A prominent warning on stderr."""
    _err_console.print(f"[bold yellow]warning:[/] {message}", highlight=False)


class TrainingProgress:
    """A live progress bar for one training job: ``start(total)`` when training begins, then call it per step."""

    def __init__(self, progress: Progress, description: str) -> None:
        self._progress = progress
        self._task = progress.add_task(description, total=None, loss="-", start=False)
        self._recent: list[float] = []

    def start(self, total: int) -> None:
        """Begin timing (model loading and planning are not part of the bar's elapsed time)."""
        self._progress.reset(self._task, total=total, loss="-", start=True)

    def __call__(self, done: int, planned: int, loss: float | None) -> None:
        """Trainer callback: advance to ``done`` of ``planned`` steps."""
        if loss is not None:
            self._recent.append(loss)
            del self._recent[:-20]
        shown = f"{sum(self._recent) / len(self._recent):.4f}" if self._recent else "-"
        self._progress.update(self._task, completed=done, total=planned, loss=shown)


@contextmanager
def training_progress(description: str) -> Iterator[TrainingProgress]:
    """A live progress bar (smoothed loss over the last 20 steps, elapsed and remaining time)."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps  loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        yield TrainingProgress(progress, description)


def fmt(value: Any, digits: int = 4) -> str:
    """Human-readable cell: floats to ``digits`` significant digits, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def key_value_table(title: str, rows: Sequence[tuple[str, object]]) -> Table:
    """A two-column table."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in rows:
        table.add_row(key, fmt(value))
    return table
