"""The privacy ledger's file: parsing its lines, the write lock, durable appends, and the head anchor.

Storage knows bytes and records, never budgets: what may be spent is decided in :mod:`common.privacy.ledger`, and
whether the file is intact in :mod:`common.privacy.verification`. Invariants this module keeps:

* **Append-only.** A write replaces the file with its previous bytes plus the new lines (never a changed byte of an
  existing line), atomically and durably: temp file, fsync, rename, fsync of the directory
  (:func:`common.fileio.atomic_write_bytes`). A reader sees the old file or the new one, never a mix.
* **Ledger first, anchor second.** The head anchor (``<ledger>.head``: last seq and hash, signed when the ledger is)
  is rewritten only after the ledger file is durable. A crash in between leaves the anchor behind the last write,
  which verification accepts; it refuses an anchor *ahead* of the file (records deleted from the end).
* **Header alone first.** A new ledger is created as its header alone, anchored, before anything is appended. So
  the only state without an anchor a crash can leave is a ledger with no events at all: verification refuses a
  missing anchor on any ledger that holds an event (a ledger cut back to its first event is tampering).
* **Several records, one write.** An append (e.g. upgrade, record set and reserve) is one atomic write: either all
  of its records are in the file or none.
* **One writer.** Writes run under an exclusive lock file (``<ledger>.lock``); holding it, no writer is active, so
  temp files left beside the ledger are leftovers of killed writers and are removed.

The records' format is :mod:`common.privacy.records`'; nothing here changes it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from filelock import FileLock, Timeout
from pydantic import BaseModel, ValidationError

from common.errors import LedgerCorruptError, LedgerError, LedgerTamperError
from common.fileio import atomic_write_bytes
from common.privacy.chain import GENESIS_HASH, canonical_json, v1_hash, v2_hash
from common.privacy.record_sets import RecordSets
from common.privacy.records import (
    RECORD_ADAPTER,
    AnyRecord,
    BaseRecord,
    CommitRecord,
    HeaderRecord,
    ReserveRecord,
    UpgradeRecord,
    encode_record,
    timestamp,
)
from common.privacy.signing import public_key_text, sign_hash

RecordT = TypeVar("RecordT", bound=BaseRecord)


def head_path(path: Path) -> Path:
    """Where a ledger's head anchor (last seq and hash) lives."""
    return path.with_name(path.name + ".head")


class HeadAnchor(BaseModel):
    """The head anchor file: the ledger's last record (seq and hash) and the ledger's id, optionally signed.

    Without it, deleting records from the END of the file would leave a shorter chain that still verifies.
    """

    seq: int
    hash: str
    ledger_id: str
    signature: str | None = None

    def signed_message(self) -> str:
        """The digest a signed anchor's signature covers: ledger id, seq and hash."""
        return hashlib.sha256(
            canonical_json({"head": self.ledger_id, "seq": self.seq, "hash": self.hash}).encode()
        ).hexdigest()


@dataclass(frozen=True)
class LedgerSnapshot:
    """An immutable view of a ledger file's records (empty when the file does not exist yet).

    Verified when it comes from :meth:`common.privacy.ledger.PrivacyLedger.snapshot`; only parsed when it comes from
    :func:`read_unverified`.
    """

    path: Path
    records: tuple[AnyRecord, ...] = ()
    committed: frozenset[str] = field(default_factory=frozenset)

    @property
    def header(self) -> HeaderRecord | None:
        """The header record, if the ledger exists."""
        first = self.records[0] if self.records else None
        return first if isinstance(first, HeaderRecord) else None

    @cached_property
    def sets(self) -> RecordSets:
        """Every record set the ledger stores, decoded once and checked against its address."""
        return RecordSets(self.records, source=str(self.path))

    @property
    def upgrade(self) -> UpgradeRecord | None:
        """The record from which the ledger keeps per-record budgets (None for a ledger not yet upgraded)."""
        return next((r for r in self.records if isinstance(r, UpgradeRecord)), None)

    def reservations(self, fingerprint: str | None = None) -> list[ReserveRecord]:
        """Reserve records (every one counts as spent), optionally of one dataset, in ledger order."""
        return [
            r
            for r in self.records
            if isinstance(r, ReserveRecord) and (fingerprint is None or r.dataset_fingerprint == fingerprint)
        ]

    def fingerprints(self) -> list[str]:
        """Datasets in order of first appearance."""
        return list(dict.fromkeys(r.dataset_fingerprint for r in self.reservations()))


def read_records(path: Path) -> list[AnyRecord]:
    """Parse every line of the ledger at ``path``; raise LedgerCorruptError naming the first bad line.

    An empty file or a last line without its newline (a cut-off write) is corrupt, never read as "no spend".
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LedgerCorruptError(f"{path}: cannot read the ledger: {exc.strerror}") from None
    if not raw:
        raise LedgerCorruptError(f"{path}: the ledger file is empty (expected at least its header)")
    lines = raw.split(b"\n")
    if lines[-1] != b"":
        raise LedgerCorruptError(
            f"{path}:{len(lines)}: truncated last line (no end of line): the ledger was cut off or damaged"
        )
    records: list[AnyRecord] = []
    for number, line in enumerate(lines[:-1], start=1):
        try:
            payload = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LedgerCorruptError(f"{path}:{number}: not a valid ledger line ({exc})") from None
        try:
            records.append(RECORD_ADAPTER.validate_python(payload))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise LedgerCorruptError(f"{path}:{number}: not a valid ledger record ({where}: {first['msg']})") from None
    return records


def read_head(path: Path) -> HeadAnchor | None:
    """The head anchor of the ledger at ``path``, or None if it has none.

    An anchor that exists but cannot be read cannot vouch for where the ledger ends, so it is reported as tampering
    (LedgerTamperError): fail closed.
    """
    anchor = head_path(path)
    if not anchor.exists():
        return None
    try:
        return HeadAnchor.model_validate_json(anchor.read_bytes())
    except ValidationError:
        raise LedgerTamperError(f"{anchor}: the head anchor is unreadable") from None


def read_unverified(path: Path) -> LedgerSnapshot:
    """Parse a ledger WITHOUT checking its chain, signatures or anchor (for showing a damaged ledger to an auditor).

    Unparseable files still raise LedgerCorruptError naming the line; training never uses this function.
    """
    records = read_records(path)
    committed = frozenset(r.event_id for r in records if isinstance(r, CommitRecord))
    return LedgerSnapshot(path=path, records=tuple(records), committed=committed)


class LedgerFile:
    """The writing side of one ledger file: its lock, and sealing and appending records durably."""

    def __init__(self, path: Path, *, signing_key: Ed25519PrivateKey | None, lock_timeout: float) -> None:
        self.path = Path(path)
        self.signing_key = signing_key
        self._lock = FileLock(str(self.path) + ".lock", timeout=lock_timeout)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the ledger's exclusive lock (read-verify-append must not interleave with another writer)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._lock:
                # Holding the lock, no writer is active: temp files beside the ledger are leftovers of writers
                # that were killed mid-write (the rename never happened, so their content was never part of it).
                for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
                    stale.unlink(missing_ok=True)
                yield
        except Timeout:
            raise LedgerError(f"{self.path}: another process holds the ledger lock ({self._lock.lock_file})") from None

    def append(self, snapshot: LedgerSnapshot, *records: AnyRecord) -> list[AnyRecord]:
        """Seal ``records`` after the snapshot's last record, make them durable (one write), then the anchor.

        ``snapshot`` must be the verified content of the file, read under :meth:`locked`. Each record's ``seq``,
        ``prev_hash``, ``hash`` and ``signature`` are placeholders that sealing replaces. A ledger that does not
        exist yet is first created as its header alone, anchored. Returns the sealed records.
        """
        if snapshot.header is None:
            if snapshot.records:
                raise LedgerTamperError(f"{self.path}:1: the first record is not the ledger header")
            snapshot = self._create()
        header = snapshot.header
        assert header is not None  # _create wrote it
        self._check_signing_key(header)
        last = snapshot.records[-1]
        upgraded = snapshot.upgrade is not None
        sealed: list[AnyRecord] = []
        for record in records:
            upgraded = upgraded or isinstance(record, UpgradeRecord)
            last = self._seal(record.model_copy(update={"seq": last.seq + 1}), last.hash, v2=upgraded)
            sealed.append(last)
        addition = "".join(encode_record(r) + "\n" for r in sealed).encode()
        atomic_write_bytes(self.path, self.path.read_bytes() + addition)
        self._write_head(HeadAnchor(seq=last.seq, hash=last.hash, ledger_id=header.ledger_id))
        return sealed

    def _create(self) -> LedgerSnapshot:
        """Write a new ledger's header alone, then its anchor (see the module docstring: 'Header alone first')."""
        header = self._seal(
            HeaderRecord(
                seq=0,
                prev_hash=GENESIS_HASH,
                created_at=timestamp(),
                ledger_id=str(uuid.uuid4()),
                public_key=public_key_text(self.signing_key.public_key()) if self.signing_key else None,
            ),
            GENESIS_HASH,
            v2=False,
        )
        atomic_write_bytes(self.path, (encode_record(header) + "\n").encode())
        self._write_head(HeadAnchor(seq=0, hash=header.hash, ledger_id=header.ledger_id))
        return LedgerSnapshot(path=self.path, records=(header,))

    def _check_signing_key(self, header: HeaderRecord) -> None:
        """A signed ledger is appended to only with its own key; an unsigned one stays unsigned."""
        if header.public_key is not None:
            if self.signing_key is None:
                raise LedgerError(f"{self.path}: this ledger is signed; pass its signing key to write to it")
            if public_key_text(self.signing_key.public_key()) != header.public_key:
                raise LedgerError(f"{self.path}: the signing key given is not the key this ledger is signed with")
        elif self.signing_key is not None:
            raise LedgerError(f"{self.path}: this ledger was created unsigned; it cannot switch to signing")

    def _seal(self, record: RecordT, prev_hash: str, *, v2: bool) -> RecordT:
        unsigned = record.model_copy(update={"prev_hash": prev_hash, "hash": "", "signature": None})
        digest = v2_hash(unsigned) if v2 else v1_hash(unsigned)
        signature = sign_hash(self.signing_key, digest) if self.signing_key is not None else None
        return unsigned.model_copy(update={"hash": digest, "signature": signature})

    def _write_head(self, head: HeadAnchor) -> None:
        if self.signing_key is not None:
            head = head.model_copy(update={"signature": sign_hash(self.signing_key, head.signed_message())})
        atomic_write_bytes(head_path(self.path), (head.model_dump_json() + "\n").encode())
