"""Rolling a ledger back: what the file alone detects, and what a witness (a server that saw a later head) detects.

The issue's probes: "Restoring an older ledger together with its .head passes audit --verify, signed or not;
cutting a ledger to its first event and deleting .head is accepted (the crash allowance); an unsigned ledger can
have its chain recomputed after deleting events." A file on its own cannot show it was once longer; a witness can.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from common.errors import LedgerError, LedgerTamperError
from common.privacy.audit import audit_ledger
from common.privacy.chain import LedgerHead, v1_hash, v2_hash, verify_witnessed
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import PrivacyLedger
from common.privacy.records import RECORD_ADAPTER, encode_record
from common.privacy.storage import HeadAnchor, head_path, read_records
from common.privacy.witnesses import check_witnessed, read_witnesses
from tests.helpers import synthetic_dataset

DATA = synthetic_dataset("w.jsonl", 1000, tag="w")
EVENT = DpSgdEvent(noise_multiplier=2.0, sample_rate=0.05, steps=20, max_grad_norm=1.0)


def round_trip(ledger: PrivacyLedger, rnd: int) -> None:
    reservation = ledger.reserve(
        dataset=DATA, event=EVENT, delta=1e-5, limit=20.0, accountant="rdp", run_id="r", round=rnd
    )
    ledger.commit(reservation)


def copy_ledger(source: Path, target: Path) -> None:
    for name in (source.name, head_path(source).name, source.name + ".record-key"):
        shutil.copyfile(source.parent / name, target.parent / name.replace(source.name, target.name))


def test_a_proof_links_the_witnessed_head_to_the_current_one(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    round_trip(ledger, 1)
    witnessed = ledger.head()
    assert witnessed is not None and witnessed.seq == 4
    round_trip(ledger, 2)
    round_trip(ledger, 3)
    head = ledger.head()
    proof = ledger.extension_proof(witnessed)
    assert head is not None and len(proof) == 4
    verify_witnessed(witnessed, head, proof)
    verify_witnessed(head, head, ledger.extension_proof(head))  # nothing appended: an empty proof
    with pytest.raises(LedgerTamperError, match="is not the witnessed seq"):
        verify_witnessed(witnessed, head, proof[:-1])
    with pytest.raises(LedgerTamperError, match="does not extend"):
        verify_witnessed(witnessed, head, [*proof[:-1], "0" * 64])
    with pytest.raises(LedgerTamperError, match="not the witnessed ledger"):
        verify_witnessed(LedgerHead("another", witnessed.seq, witnessed.hash), head, proof)


def test_restoring_an_older_ledger_with_its_anchor_verifies_alone_but_not_against_a_witness(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = PrivacyLedger(path)
    round_trip(ledger, 1)
    copy_ledger(path, tmp_path / "backup.jsonl")  # an insider keeps a copy after round 1
    round_trip(ledger, 2)
    witnessed = ledger.head()  # the server saw round 2's head
    assert witnessed is not None
    copy_ledger(tmp_path / "backup.jsonl", path)  # ... and restores the copy: round 2's spend is gone
    PrivacyLedger(path).snapshot()  # the file alone verifies
    with pytest.raises(LedgerTamperError, match="no longer contains"):
        PrivacyLedger(path).check_witness(witnessed)
    with pytest.raises(LedgerTamperError, match="no longer contains"):
        PrivacyLedger(path).extension_proof(witnessed)


def test_a_ledger_cut_back_to_its_first_event_with_its_anchor_deleted_is_refused(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = PrivacyLedger(path)
    round_trip(ledger, 1)
    round_trip(ledger, 2)
    lines = path.read_text().splitlines()
    path.write_text("".join(line + "\n" for line in lines[:4]))  # header, upgrade, set, first reserve
    head_path(path).unlink()
    with pytest.raises(LedgerTamperError, match="head anchor is missing"):
        PrivacyLedger(path).snapshot()
    with pytest.raises(LedgerTamperError):
        round_trip(PrivacyLedger(path), 3)  # nothing is trained on it


def test_an_unsigned_chain_recomputed_after_deleting_events_is_caught_by_the_witness(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = PrivacyLedger(path)
    for rnd in (1, 2, 3):
        round_trip(ledger, rnd)
    witnessed = ledger.head()
    assert witnessed is not None
    # The insider deletes round 2 (seq 5, 6) and rewrites every later record and the anchor with valid hashes.
    records = read_records(path)
    kept = [*records[:5], *records[7:]]
    rewritten = []
    for seq, record in enumerate(kept):
        previous = rewritten[-1].hash if rewritten else record.prev_hash
        changed = record.model_copy(update={"seq": seq, "prev_hash": previous, "hash": ""})
        rewritten.append(changed.model_copy(update={"hash": (v1_hash if seq == 0 else v2_hash)(changed)}))
    path.write_text("".join(encode_record(r) + "\n" for r in rewritten))
    last = rewritten[-1]
    head_path(path).write_text(
        HeadAnchor(seq=last.seq, hash=last.hash, ledger_id=witnessed.ledger_id).model_dump_json()
    )
    assert len(PrivacyLedger(path).snapshot().reservations()) == 2  # the file alone verifies: one run fewer
    with pytest.raises(LedgerTamperError, match="no longer contains"):
        PrivacyLedger(path).check_witness(witnessed)


def test_audit_cross_checks_a_ledger_against_a_runs_witnesses(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = PrivacyLedger(path)
    heads = []
    for rnd in (1, 2):
        round_trip(ledger, rnd)
        heads.append(ledger.head())
    report = tmp_path / "privacy_report.json"
    entries = [
        {"site": "site-a", "round": rnd, "ledger_id": h.ledger_id, "seq": h.seq, "hash": h.hash}
        for rnd, h in enumerate(heads, start=1)
    ]
    report.write_text(json.dumps({"witnesses": [*entries, {**entries[0], "ledger_id": "someone-else"}]}))
    snapshot = PrivacyLedger(path).snapshot()
    assert len(check_witnessed(snapshot, read_witnesses(report), report=report)) == 2
    # A rolled-back copy fails the cross-check, naming the round the server saw.
    copy_ledger(path, tmp_path / "copy.jsonl")
    lines = (tmp_path / "copy.jsonl").read_text().splitlines()
    (tmp_path / "copy.jsonl").write_text("".join(line + "\n" for line in lines[:-2]))
    first = RECORD_ADAPTER.validate_python(json.loads(lines[-3]))
    head_path(tmp_path / "copy.jsonl").write_text(
        HeadAnchor(seq=first.seq, hash=first.hash, ledger_id=heads[0].ledger_id).model_dump_json()
    )
    rolled_back = PrivacyLedger(tmp_path / "copy.jsonl").snapshot()
    with pytest.raises(LedgerTamperError, match="round 2, which this ledger no longer contains"):
        check_witnessed(rolled_back, read_witnesses(report), report=report)
    report.write_text(json.dumps({"witnesses": [{**entries[0], "ledger_id": "x"}]}))
    with pytest.raises(LedgerTamperError, match="witnessed no head of this ledger"):
        check_witnessed(snapshot, read_witnesses(report), report=report)
    report.write_text("{}")
    with pytest.raises(LedgerError, match="not a privacy report"):
        read_witnesses(report)
    assert audit_ledger(path, verify=True).per_record
