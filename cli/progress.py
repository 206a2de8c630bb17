"""Round-by-round progress lines and tables, from the records the round loop produces (``server.federation``)."""

from __future__ import annotations

from rich.table import Table

from cli.display import fmt
from common.federation import protocol as p
from common.federation.rounds import FederationResult, RoundRecord, Status

HEADERS = ("round", "trained", "refused", "rejected", "crashed", "server loss", "server acc", "sites acc", "epsilon")


def round_table() -> Table:
    """An empty table with one column per progress field."""
    table = Table(title="Rounds", title_justify="left")
    for header in HEADERS:
        table.add_column(header, justify="right")
    return table


def round_row(record: RoundRecord) -> tuple[str, ...]:
    """The progress fields of one round record (counts per status, accuracies, epsilon range).

    The loss is the server's, on its own held-out data: sites send no training loss (it is a query on their data
    without noise).
    """
    counted = (Status.TRAINED, Status.REFUSED, Status.REJECTED, Status.CRASHED)
    spent = [e for site in record.sites if (e := site.metrics.get(p.EPSILON_SPENT)) is not None]
    server = record.server_eval or {}
    federated = record.federated_eval or {}
    epsilon = f"{min(spent):.3g}..{max(spent):.3g}" if spent else "-"
    return (
        str(record.round),
        *(str(len(record.with_status(status))) for status in counted),
        fmt(server.get("loss")),
        fmt(server.get("accuracy")),
        fmt(federated.get("accuracy")),
        epsilon,
    )


def round_line(row: tuple[str, ...]) -> str:
    """One log-friendly line: ``round=1  trained=3  ...``."""
    return "  ".join(f"{h}={v}" for h, v in zip(HEADERS, row, strict=True))


def selection_line(result: FederationResult) -> str:
    """One line: which round's adapter is the run's result (``adapter/``), and why."""
    kept = result.selected
    if kept is None:  # a metrics.json written before rounds were selected: the last round's
        return f"kept the adapter of round {result.completed_rounds} (the last)"
    return f"kept the adapter of round {kept.round}: {kept.reason}"
