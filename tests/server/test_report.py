"""Run reports from typed records: metrics.json, the privacy report per site, the progress plot."""

from __future__ import annotations

import json
from pathlib import Path

from common.federation.config import FederationConfig
from common.federation.rounds import FederationResult, RoundRecord, SiteResult, Status
from server.report import METRICS_FILE, PLOT_FILE, PRIVACY_REPORT_FILE, write_outputs


def spent(node, name, epsilon, status=Status.TRAINED):
    return SiteResult(node, name, status, metrics={"epsilon-spent": epsilon, "noise-multiplier": 1.1, "delta": 1e-5})


def test_reports_follow_the_records(tmp_path: Path):
    history = (
        RoundRecord(0, server_eval={"accuracy": 0.5}),
        RoundRecord(1, (1, 2), (spent(1, "a", 1.0), spent(2, "b", 2.0)), server_eval={"accuracy": 0.7}),
        RoundRecord(2, (1, 2), (spent(1, "a", 2.5), SiteResult(2, "b", Status.CRASHED, "boom")), server_eval=None),
    )
    result = FederationResult("run-9", tmp_path, 2, 3, "stopped early", history)
    write_outputs(tmp_path, FederationConfig(), result)
    metrics = json.loads((tmp_path / METRICS_FILE).read_text())
    assert metrics["crashes"] == [{"round": 2, **history[2].sites[1].to_json()}]
    assert FederationResult.from_metrics(metrics, tmp_path) == result
    report = json.loads((tmp_path / PRIVACY_REPORT_FILE).read_text())
    assert [r["epsilon_spent"] for r in report["sites"]["a"]] == [1.0, 2.5]
    assert [r["status"] for r in report["sites"]["b"]] == ["trained", "crashed"]
    assert report["final_epsilon_spent"] == {"a": 2.5, "b": 2.0}  # b's last REPORTED spend
    assert (tmp_path / PLOT_FILE).read_bytes()[:4] == b"\x89PNG"
