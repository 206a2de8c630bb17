"""Each tamper case is detected and the first bad record named; truncation is reported, never ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import LedgerCorruptError, LedgerTamperError
from common.privacy.chain import v1_hash, v2_hash
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import PrivacyLedger
from common.privacy.records import RECORD_ADAPTER, encode_record
from common.privacy.signing import generate_signing_key, load_signing_key
from common.privacy.storage import head_path, read_unverified
from tests.helpers import synthetic_dataset

DATA = synthetic_dataset("d.jsonl", 10_000, tag="c")


def build(path: Path, rounds: int = 3, key=None) -> list[str]:
    """Lines: header, upgrade, record set, then (reserve, commit) per round: reserves at 3, 5, 7, commits at 4, 6, 8."""
    ledger = PrivacyLedger(path, signing_key=key)
    event = DpSgdEvent(noise_multiplier=1.0, sample_rate=0.02, steps=50, max_grad_norm=1.0)
    for rnd in range(rounds):  # the RDP accountant keeps these structural tests fast
        reservation = ledger.reserve(
            dataset=DATA, event=event, delta=1e-5, limit=50.0, accountant="rdp", run_id="r", round=rnd
        )
        ledger.commit(reservation)
    return path.read_text().splitlines()


def write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def rehash(line: str, **changes) -> str:
    """What a forger who knows the format does: change fields and recompute the record's own hash."""
    payload = {**json.loads(line), **changes}
    record = RECORD_ADAPTER.validate_python(payload)
    rule = v1_hash if record.type == "header" else v2_hash  # every record after the header is an upgraded one
    record = record.model_copy(update={"hash": rule(record)})
    return encode_record(record)


def tamper_error(path: Path, key=None) -> str:
    with pytest.raises(LedgerTamperError) as info:
        PrivacyLedger(path).snapshot() if key is None else PrivacyLedger(path, trusted_public_key=key).snapshot()
    return str(info.value)


def test_intact_ledger_verifies(tmp_path):
    path = tmp_path / "l.jsonl"
    lines = build(path)
    assert len(lines) == 9  # header, upgrade, record set + 3 x (reserve, commit)
    assert len(PrivacyLedger(path).snapshot().records) == 9


def test_edited_event(tmp_path):
    path = tmp_path / "l.jsonl"
    lines = build(path)
    lines[5] = lines[5].replace('"steps":50', '"steps":5')  # seq 5 is the second reserve
    write(path, lines)
    message = tamper_error(path)
    assert "l.jsonl:6:" in message and "reserve record seq 5" in message and "was edited" in message


def test_edited_event_with_recomputed_hash(tmp_path):
    path = tmp_path / "l.jsonl"
    lines = build(path)
    lines[5] = rehash(lines[5], steps=5)
    write(path, lines)
    message = tamper_error(path)
    assert "l.jsonl:7:" in message and "does not chain to the record before it" in message


def test_deleted_event_in_the_middle(tmp_path):
    path = tmp_path / "l.jsonl"
    lines = build(path)
    del lines[5]
    write(path, lines)
    message = tamper_error(path)
    assert "event(s) seq 5 were deleted" in message


def test_deleted_events_at_the_end(tmp_path):
    path = tmp_path / "l.jsonl"
    lines = build(path)
    write(path, lines[:-2])
    message = tamper_error(path)
    assert "event(s) seq 7..8 were deleted from the end" in message


def test_reordered_events(tmp_path):
    path = tmp_path / "l.jsonl"
    lines = build(path)
    lines[5], lines[7] = lines[7], lines[5]
    write(path, lines)
    message = tamper_error(path)
    assert "l.jsonl:6:" in message and "seq 7" in message and "deleted" in message


def test_inserted_event(tmp_path):
    path = tmp_path / "l.jsonl"
    lines = build(path)
    forged = rehash(lines[5], event_id="forged", seq=5)
    lines.insert(5, forged)
    write(path, lines)
    message = tamper_error(path)
    assert "l.jsonl:7:" in message and "inserted or reordered" in message


def test_duplicated_event(tmp_path):
    path = tmp_path / "l.jsonl"
    lines = build(path, rounds=2)
    copy = rehash(lines[3], seq=7, prev_hash=json.loads(lines[6])["hash"])
    write(path, [*lines, copy])
    assert "repeats an event id" in tamper_error(path)


def test_missing_head_anchor(tmp_path):
    path = tmp_path / "l.jsonl"
    build(path)
    head_path(path).unlink()
    assert "head anchor is missing" in tamper_error(path)


def test_truncated_last_line_is_reported(tmp_path):
    path = tmp_path / "l.jsonl"
    build(path)
    data = path.read_bytes()
    path.write_bytes(data[:-25])
    with pytest.raises(LedgerCorruptError, match=r"l.jsonl:9: truncated last line"):
        PrivacyLedger(path).snapshot()
    with pytest.raises(LedgerCorruptError, match="truncated"):
        read_unverified(path)


def test_garbage_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "l.jsonl"
    lines = build(path)
    lines[2] = "{not json"
    write(path, lines)
    with pytest.raises(LedgerCorruptError, match=r"l.jsonl:3: not a valid ledger line"):
        PrivacyLedger(path).snapshot()


def test_signed_ledger_detects_forged_hashes(tmp_path):
    key_file = tmp_path / "k"
    generate_signing_key(key_file)
    key = load_signing_key(key_file)
    path = tmp_path / "l.jsonl"
    lines = build(path, key=key)
    PrivacyLedger(path, trusted_public_key=key.public_key()).snapshot()
    # A forger rewrites the whole chain from seq 3 (the first reserve) with correct hashes, but cannot sign.
    forged = lines[:3]
    for line in lines[3:]:
        forged.append(
            rehash(line, prev_hash=json.loads(forged[-1])["hash"], steps=5)
            if '"reserve"' in line
            else rehash(line, prev_hash=json.loads(forged[-1])["hash"])
        )
    write(path, forged)
    assert "missing or invalid signature" in tamper_error(path)


def test_pinned_key_rejects_a_re_keyed_ledger(tmp_path):
    (tmp_path / "a").parent.mkdir(exist_ok=True)
    generate_signing_key(tmp_path / "a")
    generate_signing_key(tmp_path / "b")
    path = tmp_path / "l.jsonl"
    build(path, key=load_signing_key(tmp_path / "b"))
    assert "different signing key" in tamper_error(path, key=load_signing_key(tmp_path / "a").public_key())


def test_tampered_ledger_refuses_training(tmp_path):
    path = tmp_path / "l.jsonl"
    lines = build(path)
    del lines[3]
    write(path, lines)
    event = DpSgdEvent(noise_multiplier=1.0, sample_rate=0.02, steps=50, max_grad_norm=1.0)
    with pytest.raises(LedgerTamperError):
        PrivacyLedger(path).reserve(dataset=DATA, event=event, delta=1e-5, limit=50.0, accountant="rdp", run_id="r")
