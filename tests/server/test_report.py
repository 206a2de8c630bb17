"""Run reports from typed records: metrics.json, the privacy report per site, the progress plot."""

from __future__ import annotations

import json
from pathlib import Path

from common.federation.config import FederationConfig
from common.federation.rounds import FederationResult, RoundRecord, Selection, SiteResult, Status
from common.privacy.chain import LedgerHead
from common.privacy.witnesses import read_witnesses
from server.identities import Identities, SiteIdentity
from server.report import METRICS_FILE, PLOT_FILE, PRIVACY_REPORT_FILE, write_outputs


def spent(node, name, epsilon, status=Status.TRAINED, seq=None):
    head = LedgerHead(f"ledger-{name}", seq, f"{seq:x}" * 64) if seq is not None else None
    metrics = {"epsilon-spent": epsilon, "noise-multiplier": 1.1, "delta": 1e-5}
    return SiteResult(node, name, status, metrics=metrics, key_fingerprint=f"SHA256:{name}", ledger_head=head)


def test_reports_follow_the_records(tmp_path: Path):
    history = (
        RoundRecord(0, server_eval={"accuracy": 0.5}),
        RoundRecord(1, (1, 2), (spent(1, "a", 1.0, seq=1), spent(2, "b", 2.0, seq=1)), server_eval={"accuracy": 0.7}),
        RoundRecord(
            2, (1, 2), (spent(1, "a", 2.5, seq=3), SiteResult(2, "b", Status.CRASHED, "boom")), server_eval=None
        ),
    )
    kept = Selection(1, "accuracy", 0.7, "highest accuracy on the server's held-out data (0.7)")
    result = FederationResult("run-9", tmp_path, 2, 3, "stopped early", history, selected=kept)
    identities = Identities(
        [SiteIdentity(1, "a", "SHA256:a", "enrolled"), SiteIdentity(2, "b", "SHA256:b", "enrolled")]
    )
    write_outputs(tmp_path, FederationConfig(), result, identities=identities)
    metrics = json.loads((tmp_path / METRICS_FILE).read_text())
    assert metrics["crashes"] == [{"round": 2, **history[2].sites[1].to_json()}]
    assert FederationResult.from_metrics(metrics, tmp_path) == result  # the kept round included
    assert (metrics["selected_round"], metrics["select_metric"], metrics["selected_value"]) == (1, "accuracy", 0.7)
    report = json.loads((tmp_path / PRIVACY_REPORT_FILE).read_text())
    assert [r["epsilon_spent"] for r in report["sites"]["a"]] == [1.0, 2.5]
    assert [r["status"] for r in report["sites"]["b"]] == ["trained", "crashed"]
    assert report["final_epsilon_spent"] == {"a": 2.5, "b": 2.0}  # b's last REPORTED spend
    assert report["identities"]["a"] == {"node_id": 1, "name": "a", "key_fingerprint": "SHA256:a", "source": "enrolled"}
    assert report["sites"]["a"][0]["key_fingerprint"] == "SHA256:a"
    # Witnesses in the audit's format: one per head the server accepted, in round order.
    assert report["witnesses"] == [
        {"site": "a", "round": 1, "ledger_id": "ledger-a", "seq": 1, "hash": "1" * 64},
        {"site": "b", "round": 1, "ledger_id": "ledger-b", "seq": 1, "hash": "1" * 64},
        {"site": "a", "round": 2, "ledger_id": "ledger-a", "seq": 3, "hash": "3" * 64},
    ]
    assert [(w.site, w.round, w.head.seq) for w in read_witnesses(tmp_path / PRIVACY_REPORT_FILE)] == [
        ("a", 1, 1),
        ("b", 1, 1),
        ("a", 2, 3),
    ]
    assert (tmp_path / PLOT_FILE).read_bytes()[:4] == b"\x89PNG"
