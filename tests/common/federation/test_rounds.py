"""Round records: typed, JSON round trip, old records still readable, crashes found in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import FederationError
from common.federation.rounds import FederationResult, RoundRecord, SiteResult, Status
from common.privacy.chain import LedgerHead

TRAINED = SiteResult(
    1,
    "site-a",
    Status.TRAINED,
    metrics={"epsilon-spent": 1.5},
    update_norm=0.3,
    upload_bytes=10,
    key_fingerprint="SHA256:abc",
    ledger_head=LedgerHead("ledger-a", 5, "e" * 64),
)
CRASHED = SiteResult(2, "node 2", Status.CRASHED, "no reply before the round timeout")


def test_records_round_trip_through_json():
    record = RoundRecord(
        round=2,
        sampled=(1, 2),
        sites=(TRAINED, CRASHED),
        train={"sites-trained": 1.0},
        server_eval={"accuracy": 0.75, "roc_auc": None},
        federated_eval=None,
        seconds=1.5,
        upload_precision="float32",
    )
    assert RoundRecord.from_json(record.to_json()) == record
    assert record.with_status(Status.CRASHED) == [CRASHED]


def test_a_record_written_before_the_typed_records_still_reads():
    old_round_zero = {"round": 0, "server_eval": {"accuracy": 0.5}}
    old_stopped = {"round": 3, "sampled": [1], "sites": [], "train": None, "aggregated": False}
    assert RoundRecord.from_json(old_round_zero) == RoundRecord(0, server_eval={"accuracy": 0.5})
    assert RoundRecord.from_json(old_stopped).aggregated is False
    old_site = {"node_id": 3, "site_name": "site", "status": "trained"}  # before identities and witnesses
    assert SiteResult.from_json(old_site) == SiteResult(3, "site", Status.TRAINED)


def test_statuses_are_the_strings_on_the_wire():
    assert [s.value for s in Status] == ["trained", "refused", "skipped", "rejected", "crashed"]
    with pytest.raises(ValueError):
        Status("done")


def test_crashes_are_collected_and_raised_with_site_round_and_reason(tmp_path: Path):
    history = (RoundRecord(1, sites=(TRAINED,)), RoundRecord(2, sites=(TRAINED, CRASHED)))
    result = FederationResult("run", tmp_path, 2, 2, None, history)
    assert not result.ok and [(c.round, c.site.node_id) for c in result.crashes] == [(2, 2)]
    with pytest.raises(FederationError, match=r"1 site crash\(es\).*node 2 \(round 2\): no reply"):
        result.raise_for_crashes()
    FederationResult("run", tmp_path, 1, 1, None, history[:1]).raise_for_crashes()  # no crash: no error


def test_result_from_metrics_document(tmp_path: Path):
    document = {
        "run_id": "r",
        "completed_rounds": 1,
        "planned_rounds": 3,
        "stop_reason": "stopped",
        "rounds": [RoundRecord(1, sites=(CRASHED,)).to_json()],
    }
    result = FederationResult.from_metrics(document, tmp_path)
    assert (result.completed_rounds, result.planned_rounds, result.stop_reason) == (1, 3, "stopped")
    assert result.history[0].sites == (CRASHED,) and len(result.crashes) == 1
