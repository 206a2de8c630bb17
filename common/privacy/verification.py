"""Verifying a privacy ledger: hash chain, signatures and head anchor; fail closed, naming the first bad record.

A ledger is trusted only after every check below passes; any failure raises
:class:`~common.errors.LedgerTamperError` naming the file, the line and the first record that breaks a rule (an
unparseable file raises :class:`~common.errors.LedgerCorruptError` from :mod:`common.privacy.storage` first):

1. the first record is the header; with a pinned (trusted) public key, the header must name exactly that key;
2. every record's hash matches its content (else it was edited), its ``seq`` is its position (else records were
   deleted, inserted or reordered), its ``prev_hash`` is the previous record's hash (else a record was replaced),
   and, in a signed ledger, its Ed25519 signature of that hash is valid (a forger who recomputes every hash still
   cannot sign);
3. there is one header; event ids are reserved once and committed once, only after their reservation;
4. the head anchor belongs to this ledger, does not point past its end (records deleted from the end), matches the
   hash of the record it names, and is signed in a signed ledger. A missing anchor is accepted only in the one state
   a crash can leave it: header and first record written, anchor not yet.

The hash chain is the construction of Haber & Stornetta (J. Cryptology 1991, "How to time-stamp a digital
document"); signatures are Ed25519 (RFC 8032).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.errors import LedgerTamperError
from common.privacy.records import GENESIS_HASH, AnyRecord, CommitRecord, HeaderRecord, ReserveRecord, record_hash
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
    return LedgerSnapshot(path=path, records=tuple(records), committed=committed)


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
    for expected_seq, record in enumerate(records):
        line = expected_seq + 1
        name = record_name(record)
        if record_hash(record) != record.hash:
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


def verify_head(path: Path, records: Sequence[AnyRecord], head: HeadAnchor | None) -> None:
    """Raise LedgerTamperError unless ``head`` (the anchor read beside ``path``) vouches for ``records``' end.

    ``records`` must already have passed :func:`verify_chain`.
    """
    anchor = head_path(path)
    header = records[0]
    if not isinstance(header, HeaderRecord):  # verify_chain refuses this first; kept so the check never depends on it
        raise LedgerTamperError(f"{path}:1: the first record is a {header.type} record, not the ledger header")
    if head is None:
        # The first write creates the header and the first record together, then the anchor: a crash in between
        # leaves exactly two records and no anchor. Anything else without an anchor was tampered with.
        if len(records) == 2:
            return
        raise LedgerTamperError(f"{anchor}: the head anchor is missing (it records where the ledger ends)")
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
    return f"header record seq {record.seq}"
