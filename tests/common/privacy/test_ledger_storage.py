"""The storage layer (lines, lock, durable appends, head anchor) and the verifier's anchor rules, one by one."""

from __future__ import annotations

from pathlib import Path

import pytest
from filelock import FileLock

from common.errors import LedgerError, LedgerTamperError
from common.privacy.chain import GENESIS_HASH, v2_hash
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import PrivacyLedger
from common.privacy.records import CommitRecord, HeaderRecord, timestamp
from common.privacy.signing import generate_signing_key, load_signing_key
from common.privacy.storage import HeadAnchor, LedgerFile, LedgerSnapshot, head_path, read_head, read_records
from common.privacy.verification import record_name, verified_snapshot, verify_chain, verify_head
from tests.helpers import synthetic_dataset

DATA = synthetic_dataset("e.jsonl", 10_000, tag="e")
EVENT = DpSgdEvent(noise_multiplier=1.0, sample_rate=0.02, steps=50, max_grad_norm=1.0)


def build(path: Path, rounds: int = 2, key=None) -> PrivacyLedger:
    ledger = PrivacyLedger(path, signing_key=key)
    for rnd in range(rounds):
        reservation = ledger.reserve(
            dataset=DATA, event=EVENT, delta=1e-5, limit=None, accountant="rdp", run_id="r", round=rnd
        )
        ledger.commit(reservation)
    return ledger


def write_head(path: Path, head: HeadAnchor) -> None:
    head_path(path).write_text(head.model_dump_json() + "\n")


# ----------------------------------------------------------------------------------------------------- storage
def test_a_new_ledger_is_its_header_anchored_before_anything_is_appended(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger_file = LedgerFile(path, signing_key=None, lock_timeout=5)
    header = ledger_file._create().records[0]  # the crash window: a header alone (no event, nothing spent)
    assert read_records(path) == [header]
    assert read_head(path) == HeadAnchor(seq=0, hash=header.hash, ledger_id=header.ledger_id)
    path.unlink()
    head_path(path).unlink()
    (sealed,) = ledger_file.append(
        LedgerSnapshot(path=path), CommitRecord(seq=0, prev_hash=GENESIS_HASH, created_at=timestamp(), event_id="x")
    )
    header, record = read_records(path)
    assert isinstance(header, HeaderRecord) and header.seq == 0 and header.public_key is None
    assert (record.seq, record.prev_hash, record.hash) == (1, header.hash, sealed.hash)
    assert read_head(path) == HeadAnchor(seq=1, hash=sealed.hash, ledger_id=header.ledger_id)


def test_appends_only_add_lines_and_move_the_anchor(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = build(path, rounds=1)
    before = path.read_bytes()
    build_more = ledger.reserve(dataset=DATA, event=EVENT, delta=1e-5, limit=None, accountant="rdp", run_id="r2")
    after = path.read_bytes()
    assert after.startswith(before) and after.count(b"\n") == before.count(b"\n") + 1
    head = read_head(path)
    assert head is not None and (head.seq, head.hash) == (build_more.record.seq, build_more.record.hash)


def test_signed_anchor_is_signed(tmp_path):
    generate_signing_key(tmp_path / "k")
    path = tmp_path / "l.jsonl"
    build(path, key=load_signing_key(tmp_path / "k"))
    head = read_head(path)
    assert head is not None and head.signature
    write_head(path, head.model_copy(update={"signature": None}))
    with pytest.raises(LedgerTamperError, match="head anchor's signature is missing or invalid"):
        PrivacyLedger(path).snapshot()


def test_the_lock_removes_only_this_ledgers_stale_temp_files(tmp_path):
    path = tmp_path / "l.jsonl"
    stale = [tmp_path / ".l.jsonl.abc.tmp", tmp_path / ".l.jsonl.head.def.tmp"]
    kept = [tmp_path / ".m.jsonl.abc.tmp", tmp_path / "l.jsonl.notes"]
    for file in stale + kept:
        file.write_text("partial")
    with LedgerFile(path, signing_key=None, lock_timeout=5).locked():
        assert not any(f.exists() for f in stale)
    assert all(f.exists() for f in kept)


def test_a_held_lock_is_a_clear_error(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = PrivacyLedger(path, lock_timeout=0.05)
    with FileLock(str(path) + ".lock"):  # another writer holds the lock for the whole block
        with pytest.raises(LedgerError, match="another process holds the ledger lock"):
            ledger.reserve(dataset=DATA, event=EVENT, delta=1e-5, limit=None, accountant="rdp", run_id="r")
        assert ledger.snapshot().records == ()  # nothing was written; reading needs no lock


def test_unreadable_anchor_fails_closed(tmp_path):
    path = tmp_path / "l.jsonl"
    build(path)
    assert read_head(tmp_path / "none.jsonl") is None
    head_path(path).write_text("{not an anchor")
    with pytest.raises(LedgerTamperError, match="head anchor is unreadable"):
        read_head(path)


# ------------------------------------------------------------------------------------------------ verification
def test_an_anchor_one_record_behind_is_a_crash_and_verifies(tmp_path):
    path = tmp_path / "l.jsonl"
    build(path)
    records = read_records(path)
    header = records[0]
    assert isinstance(header, HeaderRecord)
    write_head(path, HeadAnchor(seq=records[-2].seq, hash=records[-2].hash, ledger_id=header.ledger_id))
    assert len(verified_snapshot(path).records) == len(records)


def test_anchor_mismatches_are_tampering(tmp_path):
    path = tmp_path / "l.jsonl"
    build(path)
    records = read_records(path)
    head = read_head(path)
    assert head is not None
    with pytest.raises(LedgerTamperError, match="belongs to another ledger"):
        verify_head(path, records, head.model_copy(update={"ledger_id": "other"}))
    with pytest.raises(LedgerTamperError, match="record seq 2 does not match the hash in the head anchor"):
        verify_head(path, records, head.model_copy(update={"seq": 2}))
    with pytest.raises(LedgerTamperError, match=r"seq 7\.\.9 were deleted from the end"):
        verify_head(path, records, head.model_copy(update={"seq": 9}))
    verify_head(path, records, head)


def test_no_anchor_is_accepted_only_for_a_ledger_without_events(tmp_path):
    path = tmp_path / "l.jsonl"
    build(path, rounds=1)
    records = read_records(path)
    verify_head(path, records[:1], None)  # the header alone: the crash window of a new ledger
    for cut in (2, 4, len(records)):  # a ledger cut back to its first event(s), anchor deleted: never a crash
        with pytest.raises(LedgerTamperError, match=r"head anchor is missing.*cut back"):
            verify_head(path, records[:cut], None)


def test_a_deleted_ledger_with_its_anchor_left_is_tampering(tmp_path):
    path = tmp_path / "l.jsonl"
    build(path)
    path.unlink()
    with pytest.raises(LedgerTamperError, match="ledger file is missing but its head anchor exists"):
        verified_snapshot(path)
    assert verified_snapshot(tmp_path / "new.jsonl").records == ()


def test_chain_rules_beyond_editing(tmp_path):
    path = tmp_path / "l.jsonl"
    build(path)
    records = read_records(path)
    assert verify_chain(path, records, None) == {r.event_id for r in records if isinstance(r, CommitRecord)}
    with pytest.raises(LedgerTamperError, match=r"l.jsonl:1: the first record is a upgrade record"):
        verify_chain(path, records[1:], None)
    generate_signing_key(tmp_path / "k")
    with pytest.raises(LedgerTamperError, match="expected a ledger signed by the trusted key, but it is unsigned"):
        verify_chain(path, records, load_signing_key(tmp_path / "k").public_key())


def test_a_commit_of_an_event_never_reserved_is_tampering(tmp_path):
    path = tmp_path / "l.jsonl"
    build(path, rounds=1)
    *before, commit = read_records(path)
    unsigned = commit.model_copy(update={"event_id": "never-reserved", "hash": ""})
    forged = unsigned.model_copy(update={"hash": v2_hash(unsigned)})  # a well-formed, chained forgery
    with pytest.raises(LedgerTamperError, match=r"l.jsonl:5: commit record seq 4 .* not reserved before it"):
        verify_chain(path, [*before, forged], None)


def test_records_are_named_for_messages(tmp_path):
    path = tmp_path / "l.jsonl"
    build(path, rounds=1)
    header, upgrade, records, reserve, commit = read_records(path)
    assert record_name(header) == "header record seq 0"
    assert record_name(upgrade) == "upgrade record seq 1"
    assert record_name(records) == f"record set seq 2 (10000 records, {DATA.fingerprint[:12]})"
    assert record_name(reserve) == f"reserve record seq 3 (event {reserve.event_id}, run r, round 0)"  # type: ignore[union-attr]
    assert record_name(commit) == f"commit record seq 4 (event {commit.event_id})"  # type: ignore[union-attr]
