"""Follow a submitted run from outside the ServerApp: report each finished round, then how the run ended.

``fedtune server start`` does not run the round loop itself (Flower's ``flwr-serverapp`` does), so it reads the
round log the loop appends to (``OUT/rounds.jsonl``, :mod:`server.round_log`) and asks Flower for the run's status.
Every round of the log is reported once, in order, including the last ones written just before the run finished.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.errors import FederationError
from common.federation.rounds import RoundRecord
from common.polling import wait_until
from server.flwr_cli import FlwrCli
from server.report import METRICS_FILE
from server.round_log import RoundLog
from server.superlink import SuperLink

#: Seconds between two looks at the round log and the run's status.
POLL_INTERVAL = 2.0
#: The status Flower gives a run whose ServerApp returned normally.
COMPLETED = "finished:completed"

RoundCallback = Callable[[RoundRecord], None]


def follow_run(
    run_id: str,
    *,
    cli: FlwrCli,
    superlink: SuperLink,
    out_dir: Path,
    on_round: RoundCallback | None = None,
    interval: float = POLL_INTERVAL,
) -> dict[str, Any]:
    """Call ``on_round`` with every finished round (round >= 1) as it appears; return the run's metrics.json.

    Raises FederationError if the SuperLink exits, or if the run ends other than completed (or without its
    metrics), with the last lines of the ServerApp's log.
    """
    log = RoundLog(out_dir)
    seen = 0

    def report_new_rounds() -> None:
        nonlocal seen
        new = log.read(seen)
        seen += len(new)
        for record in new:
            if record.round >= 1 and on_round is not None:
                on_round(record)

    def finished() -> str | None:
        superlink.check_alive()
        report_new_rounds()
        status = cli.status(run_id)
        return status if status.startswith("finished") else None

    status = wait_until(finished, timeout=None, interval=interval)
    report_new_rounds()  # rounds written between the last look and the end of the run
    metrics = out_dir / METRICS_FILE
    if status != COMPLETED or not metrics.exists():
        raise FederationError(f"the run ended as {status}; last ServerApp log lines:\n{cli.log_tail(run_id)}")
    return dict(json.loads(metrics.read_text()))
