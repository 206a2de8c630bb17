"""Verifying a privacy ledger: hash chain, signatures and head anchor; fail closed, naming the first bad record.

A ledger is trusted only after every check below passes; any failure raises
:class:`~common.errors.LedgerTamperError` naming the file, the line and the first record that breaks a rule (an
unparseable file raises :class:`~common.errors.LedgerCorruptError` from :mod:`common.privacy.storage` first):

1. the first record is the header; with a pinned (trusted) public key, the header must name exactly that key;
2. every record's hash matches its content (v1 or v2 rule, :mod:`common.privacy.chain`; else it was edited), its
   ``seq`` is its position (else records were deleted, inserted or reordered), its ``prev_hash`` is the previous
   record's hash (else a record was replaced), and, in a signed ledger, its Ed25519 signature of that hash is valid
   (a forger who recomputes every hash still cannot sign);
3. there is one header and at most one upgrade; record sets, attributions and per-record reserves come after the
   upgrade, every set matches its content address and every reference names a set stored before it; a legacy
   fingerprint is attributed once; event ids are reserved once and committed once, only after their reservation;
4. the head anchor belongs to this ledger, does not point past its end (records deleted from the end), matches the
   hash of the record it names, and is signed in a signed ledger. A missing anchor is accepted only in the one state
   a crash can leave it in: a new ledger's header, written alone, before its anchor; a ledger holding any event
   without its anchor was cut back or had the anchor removed.

The hash chain is the construction of Haber & Stornetta (J. Cryptology 1991, "How to time-stamp a digital
document"); signatures are Ed25519 (RFC 8032).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.errors import LedgerTamperError
from common.privacy.chain import GENESIS_HASH, v1_hash, v2_hash
from common.privacy.records import (
    AnyRecord,
    AttributeRecord,
    CommitRecord,
    HeaderRecord,
    RecordSetRecord,
    ReserveRecord,
    UpgradeRecord,
)
from common.privacy.signing import parse_public_key, public_key_text, signature_valid
from common.privacy.storage import HeadAnchor, LedgerSnapshot, head_path, read_head, read_records


def verified_snapshot(path: Path, *, trusted: Ed25519PublicKey | None = None) -> LedgerSnapshot:
    """Read the ledger at ``path`` and verify all of it (parse, chain, signatures, head anchor).

    A ledger that does not exist is empty, unless its head anchor exists (then the file was deleted).
    """
    if not path.exists():
        if head_path(path).exists():
            raise LedgerTamperError(f"{path}: the ledger file is missing but its head anchor exists")
        return LedgerSnapshot(path=path)
    records = read_records(path)
    committed = verify_chain(path, records, trusted)
    verify_head(path, records, read_head(path))
    snapshot = LedgerSnapshot(path=path, records=tuple(records), committed=committed)
    verify_references(snapshot)
    return snapshot


def verify_chain(path: Path, records: Sequence[AnyRecord], trusted: Ed25519PublicKey | None) -> frozenset[str]:
    """Raise LedgerTamperError at the first record that breaks the chain; return the committed event ids."""
    header = records[0]
    if not isinstance(header, HeaderRecord):
        raise LedgerTamperError(f"{path}:1: the first record is a {header.type} record, not the ledger header")
    public_key = parse_public_key(header.public_key, source=f"{path}:1") if header.public_key else None
    if trusted is not None:
        if public_key is None:
            raise LedgerTamperError(f"{path}: expected a ledger signed by the trusted key, but it is unsigned")
        if public_key_text(public_key) != public_key_text(trusted):
            raise LedgerTamperError(f"{path}:1: the ledger header names a different signing key than the trusted one")
    reserved: set[str] = set()
    committed: set[str] = set()
    previous_hash = GENESIS_HASH
    upgraded = False
    for expected_seq, record in enumerate(records):
        line = expected_seq + 1
        name = record_name(record)
        if isinstance(record, UpgradeRecord):
            if upgraded or expected_seq == 0:
                raise LedgerTamperError(f"{path}:{line}: {name} is misplaced: a ledger upgrades once, after its header")
            upgraded = True
        if (v2_hash(record) if upgraded else v1_hash(record)) != record.hash:
            raise LedgerTamperError(f"{path}:{line}: {name} does not match its hash: the record was edited")
        if record.seq > expected_seq:
            raise LedgerTamperError(
                f"{path}:{line}: {name} follows seq {expected_seq - 1}: event(s) seq {expected_seq}"
                f"{'' if record.seq == expected_seq + 1 else f'..{record.seq - 1}'} were deleted"
            )
        if record.seq < expected_seq:
            raise LedgerTamperError(
                f"{path}:{line}: {name} appears after seq {expected_seq - 1}: an event was inserted or reordered"
            )
        if record.prev_hash != previous_hash:
            raise LedgerTamperError(
                f"{path}:{line}: {name} does not chain to the record before it: a record was replaced, "
                "inserted or reordered"
            )
        if public_key is not None and (
            record.signature is None or not signature_valid(public_key, record.hash, record.signature)
        ):
            raise LedgerTamperError(f"{path}:{line}: {name} has a missing or invalid signature")
        if expected_seq > 0 and isinstance(record, HeaderRecord):
            raise LedgerTamperError(f"{path}:{line}: a second header record: ledgers were spliced together")
        if isinstance(record, ReserveRecord):
            if record.event_id in reserved:
                raise LedgerTamperError(f"{path}:{line}: {name} repeats an event id: an event was duplicated")
            reserved.add(record.event_id)
        elif isinstance(record, CommitRecord):
            if record.event_id not in reserved or record.event_id in committed:
                raise LedgerTamperError(f"{path}:{line}: {name} commits an event that was not reserved before it")
            committed.add(record.event_id)
        previous_hash = record.hash
    return frozenset(committed)


def verify_references(snapshot: LedgerSnapshot) -> None:
    """Raise LedgerTamperError unless per-record records are well placed and refer to sets stored before them.

    Decoding the snapshot's record sets checks each against its content address.
    """
    path, records = snapshot.path, snapshot.records
    upgrade_seq = next((r.seq for r in records if isinstance(r, UpgradeRecord)), None)
    stored: set[str] = set()
    attributed: set[str] = set()
    for record in records:
        line, name = record.seq + 1, record_name(record)
        per_record = isinstance(record, RecordSetRecord | AttributeRecord) or (
            isinstance(record, ReserveRecord) and record.record_set is not None
        )
        if per_record and (upgrade_seq is None or record.seq < upgrade_seq):
            raise LedgerTamperError(f"{path}:{line}: {name} comes before the ledger's upgrade to per-record budgets")
        if (
            isinstance(record, ReserveRecord)
            and upgrade_seq is not None
            and record.seq > upgrade_seq
            and record.record_set is None
        ):
            raise LedgerTamperError(f"{path}:{line}: {name} names no record set after the upgrade")
        referenced = record.record_set if isinstance(record, ReserveRecord | AttributeRecord) else None
        if isinstance(record, RecordSetRecord):
            referenced = record.base
        if referenced is not None and referenced not in stored:
            raise LedgerTamperError(f"{path}:{line}: {name} refers to a record set not stored before it")
        if isinstance(record, AttributeRecord):
            if record.legacy_fingerprint in attributed:
                raise LedgerTamperError(f"{path}:{line}: {name} attributes a legacy dataset a second time")
            attributed.add(record.legacy_fingerprint)
        if isinstance(record, RecordSetRecord):
            stored.add(record.set_id)
    _ = snapshot.sets  # decoding checks every set against its content address


def verify_head(path: Path, records: Sequence[AnyRecord], head: HeadAnchor | None) -> None:
    """Raise LedgerTamperError unless ``head`` (the anchor read beside ``path``) vouches for ``records``' end.

    ``records`` must already have passed :func:`verify_chain`.
    """
    anchor = head_path(path)
    header = records[0]
    if not isinstance(header, HeaderRecord):  # verify_chain refuses this first; kept so the check never depends on it
        raise LedgerTamperError(f"{path}:1: the first record is a {header.type} record, not the ledger header")
    if head is None:
        # A new ledger is written as its header alone before its anchor: a crash in between leaves the header and no
        # anchor, with nothing spent. Any ledger holding more without an anchor was cut back or had it removed.
        if len(records) == 1:
            return
        raise LedgerTamperError(
            f"{anchor}: the head anchor is missing but the ledger holds {len(records) - 1} record(s) after its header:"
            " the ledger was cut back or its anchor removed (a crash cannot leave this state)"
        )
    last = records[-1].seq
    if head.ledger_id != header.ledger_id:
        raise LedgerTamperError(f"{anchor}: the head anchor belongs to another ledger")
    if head.seq > last:
        raise LedgerTamperError(
            f"{path}: the ledger ends at seq {last} but its head anchor records seq {head.seq}: "
            f"event(s) seq {last + 1}..{head.seq} were deleted from the end"
        )
    if records[head.seq].hash != head.hash:
        raise LedgerTamperError(f"{path}: record seq {head.seq} does not match the hash in the head anchor")
    if header.public_key is not None:
        key = parse_public_key(header.public_key, source=str(path))
        if head.signature is None or not signature_valid(key, head.signed_message(), head.signature):
            raise LedgerTamperError(f"{anchor}: the head anchor's signature is missing or invalid")


def record_name(record: AnyRecord) -> str:
    """How error messages name a record: its kind, seq and (for events) event id, run and round."""
    if isinstance(record, ReserveRecord):
        return f"reserve record seq {record.seq} (event {record.event_id}, run {record.run_id}, round {record.round})"
    if isinstance(record, CommitRecord):
        return f"commit record seq {record.seq} (event {record.event_id})"
    if isinstance(record, RecordSetRecord):
        return f"record set seq {record.seq} ({record.count} records, {record.set_id[:12]})"
    return f"{record.type} record seq {record.seq}"
