"""Round-by-round progress lines and tables, from the records the round loop produces (``server.federation``)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from cli.display import fmt

HEADERS = ("round", "trained", "refused", "rejected", "crashed", "train loss", "server acc", "sites acc", "epsilon")


def round_table() -> Table:
    """An empty table with one column per progress field."""
    table = Table(title="Rounds", title_justify="left")
    for header in HEADERS:
        table.add_column(header, justify="right")
    return table


def round_row(record: dict[str, Any]) -> tuple[str, ...]:
    """The progress fields of one round record (counts per status, loss, accuracies, epsilon range)."""
    sites = record.get("sites", [])
    count = {s: sum(site["status"] == s for site in sites) for s in ("trained", "refused", "rejected", "crashed")}
    spent = [site["metrics"].get("epsilon-spent") for site in sites if site["metrics"].get("epsilon-spent") is not None]
    train = record.get("train") or {}
    server = record.get("server_eval") or {}
    federated = record.get("federated_eval") or {}
    epsilon = f"{min(spent):.3g}..{max(spent):.3g}" if spent else "-"
    return (
        str(record["round"]),
        str(count["trained"]),
        str(count["refused"]),
        str(count["rejected"]),
        str(count["crashed"]),
        fmt(train.get("train-loss")),
        fmt(server.get("accuracy")),
        fmt(federated.get("accuracy")),
        epsilon,
    )


def round_line(row: tuple[str, ...]) -> str:
    """One log-friendly line: ``round=1  trained=3  ...``."""
    return "  ".join(f"{h}={v}" for h, v in zip(HEADERS, row, strict=True))
