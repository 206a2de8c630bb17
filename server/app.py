"""The fedtune ServerApp: what the coordinating server runs (``serverapp = "server.app:app"``)."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.federation.config import parse_run_config
from server.federation import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Parse the run config once, run the federation, and fail loudly if any site crashed."""
    config = parse_run_config(context.run_config)
    run_federation(grid, config).raise_for_crashes()
