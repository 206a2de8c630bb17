"""Round-by-round progress lines and tables, from the records the round loop produces (``server.federation``)."""

from __future__ import annotations

from rich.table import Table

from cli.display import fmt
from common.federation import protocol as p
from common.federation.rounds import FederationResult, RoundRecord, Status
from common.model.task import ModelTask

HEADERS = ("round", "trained", "refused", "rejected", "crashed", "server loss", "server acc", "sites acc", "epsilon")
#: A generate run's score columns: ROUGE-L of the server's generations, and the loss sites release.
GENERATE_HEADERS = (*HEADERS[:6], "server ROUGE-L", "sites loss", "epsilon")
#: The metrics behind the two score columns, per task: (server's, sites').
SCORES: dict[ModelTask, tuple[str, str]] = {"classify": ("accuracy", "accuracy"), "generate": ("rouge_l", "loss")}


def headers(task: ModelTask = "classify") -> tuple[str, ...]:
    """The progress fields' names for a run of ``task``."""
    return GENERATE_HEADERS if task == "generate" else HEADERS


def round_table(task: ModelTask = "classify") -> Table:
    """An empty table with one column per progress field."""
    table = Table(title="Rounds", title_justify="left")
    for header in headers(task):
        table.add_column(header, justify="right")
    return table


def round_row(record: RoundRecord, task: ModelTask = "classify") -> tuple[str, ...]:
    """The progress fields of one round record (counts per status, the server's loss, scores, epsilon range).

    The loss is the server's, on its own held-out data: sites send no training loss (it is a query on their data
    without noise).
    """
    counted = (Status.TRAINED, Status.REFUSED, Status.REJECTED, Status.CRASHED)
    spent = [e for site in record.sites if (e := site.metrics.get(p.EPSILON_SPENT)) is not None]
    server = record.server_eval or {}
    federated = record.federated_eval or {}
    epsilon = f"{min(spent):.3g}..{max(spent):.3g}" if spent else "-"
    server_score, sites_score = SCORES[task]
    return (
        str(record.round),
        *(str(len(record.with_status(status))) for status in counted),
        fmt(server.get("loss")),
        fmt(server.get(server_score)),
        fmt(federated.get(sites_score)),
        epsilon,
    )


def round_line(row: tuple[str, ...], task: ModelTask = "classify") -> str:
    """One log-friendly line: ``round=1  trained=3  ...``."""
    return "  ".join(f"{h}={v}" for h, v in zip(headers(task), row, strict=True))


def selection_line(result: FederationResult) -> str:
    """One line: which round's adapter is the run's result (``adapter/``), and why."""
    kept = result.selected
    if kept is None:  # a metrics.json written before rounds were selected: the last round's
        return f"kept the adapter of round {result.completed_rounds} (the last)"
    return f"kept the adapter of round {kept.round}: {kept.reason}"
