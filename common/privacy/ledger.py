"""The per-site privacy ledger: persistent, append-only, hash-chained, and checked before every spend.

Promise to a data owner: a dataset never spends more than its limit, however many rounds, runs, servers or
processes touch it. How the ledger keeps it:

* **Keyed by dataset.** Events carry the dataset's content fingerprint; spend is the composition of *every* event
  of that fingerprint in the file, whatever run, round or process wrote it. A new run, server, process or ledger
  object starts from what the file says, never from zero.
* **Recomputed, never stored.** Epsilon is recomputed from the recorded mechanisms by the accountant on every
  check; no running total exists that could drift or be reset.
* **Check before spend, write ahead.** :meth:`PrivacyLedger.reserve` projects the epsilon of the planned act
  together with everything already spent, refuses with :class:`~common.errors.BudgetExhaustedError` (writing
  nothing) if it would pass the limit, and otherwise appends a *reserve* record and makes it durable (fsync, atomic
  rename) BEFORE returning, i.e. before training starts. :meth:`PrivacyLedger.commit` appends a *commit* record
  after training and before any update leaves the site. A reserve without a commit counts as spent, so a crash at
  any moment leaves the ledger saying at least what was really spent.
* **Serialised.** Read-verify-append runs under an exclusive file lock, so two processes cannot both pass the check
  on the same remaining budget.
* **Tamper-evident.** Records form a hash chain (optionally Ed25519-signed); a head anchor beside the file records
  the last sequence number and hash, so deleting events from the end is detected too. Reads verify everything and
  fail closed: a corrupt or tampered ledger refuses further training.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from filelock import FileLock, Timeout
from pydantic import BaseModel, ValidationError

from common.errors import (
    BudgetExhaustedError,
    LedgerCorruptError,
    LedgerError,
    LedgerTamperError,
    PrivacyParameterError,
)
from common.fileio import atomic_write_bytes
from common.privacy.accountant import AccountantName, check_delta, get_accountant
from common.privacy.events import MECHANISM, DpSgdEvent
from common.privacy.records import (
    GENESIS_HASH,
    NON_PRIVATE,
    RECORD_ADAPTER,
    CommitRecord,
    HeaderRecord,
    ReserveRecord,
    canonical_json,
    encode_record,
    record_hash,
)
from common.privacy.signing import parse_public_key, public_key_text, sign_hash, signature_valid

LedgerRecordT = HeaderRecord | ReserveRecord | CommitRecord
RecordT = TypeVar("RecordT", HeaderRecord, ReserveRecord, CommitRecord)


@dataclass(frozen=True)
class DatasetRef:
    """The dataset a spend is charged to: its content fingerprint (the key), a readable id, and its size."""

    fingerprint: str
    dataset_id: str
    num_examples: int


@dataclass(frozen=True)
class Reservation:
    """A reserved spend: the durable record, and the spend before and after it (recomputed at reservation)."""

    record: ReserveRecord
    epsilon_before: float
    epsilon_after: float

    @property
    def event_id(self) -> str:
        """The reservation's id (what its commit refers to)."""
        return self.record.event_id


@dataclass(frozen=True)
class LedgerSnapshot:
    """A verified, immutable view of a ledger file's records (empty when the file does not exist yet)."""

    path: Path
    records: tuple[LedgerRecordT, ...] = ()
    committed: frozenset[str] = field(default_factory=frozenset)

    @property
    def header(self) -> HeaderRecord | None:
        """The header record, if the ledger exists."""
        first = self.records[0] if self.records else None
        return first if isinstance(first, HeaderRecord) else None

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


def epsilon_of(reservations: Sequence[ReserveRecord], *, delta: float, accountant: AccountantName) -> float:
    """Epsilon spent by ``reservations`` at ``delta`` (infinite if any was non-private)."""
    events: list[DpSgdEvent] = []
    for record in reservations:
        event = record.dp_event()
        if event is None:
            return math.inf
        events.append(event)
    return get_accountant(accountant).epsilon(events, delta=delta)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def head_path(path: Path) -> Path:
    """Where a ledger's head anchor (last seq and hash) lives."""
    return path.with_name(path.name + ".head")


class _Head(BaseModel):
    seq: int
    hash: str
    ledger_id: str
    signature: str | None = None

    def signed_message(self) -> str:
        return hashlib.sha256(
            canonical_json({"head": self.ledger_id, "seq": self.seq, "hash": self.hash}).encode()
        ).hexdigest()


class PrivacyLedger:
    """One ledger file. Cheap to construct; every operation re-reads and re-verifies the file."""

    def __init__(
        self,
        path: Path,
        *,
        signing_key: Ed25519PrivateKey | None = None,
        trusted_public_key: Ed25519PublicKey | None = None,
        lock_timeout: float = 120.0,
    ) -> None:
        self.path = Path(path)
        self.signing_key = signing_key
        self.trusted_public_key = trusted_public_key
        self._lock = FileLock(str(self.path) + ".lock", timeout=lock_timeout)

    # ----------------------------------------------------------------------------------------------- reading
    def snapshot(self) -> LedgerSnapshot:
        """Read and fully verify the ledger (parse, hash chain, signatures, head anchor)."""
        if not self.path.exists():
            if head_path(self.path).exists():
                raise LedgerTamperError(f"{self.path}: the ledger file is missing but its head anchor exists")
            return LedgerSnapshot(path=self.path)
        records = _parse(self.path)
        committed = _verify_chain(self.path, records, self.trusted_public_key)
        _verify_head(self.path, records)
        return LedgerSnapshot(path=self.path, records=tuple(records), committed=frozenset(committed))

    def spent(self, fingerprint: str, *, delta: float, accountant: AccountantName = "prv") -> float:
        """Epsilon spent so far on the dataset ``fingerprint`` at ``delta`` (reserved counts as spent)."""
        return epsilon_of(self.snapshot().reservations(fingerprint), delta=delta, accountant=accountant)

    # ----------------------------------------------------------------------------------------------- spending
    def reserve(
        self,
        *,
        dataset: DatasetRef,
        event: DpSgdEvent | None,
        delta: float,
        limit: float | None,
        accountant: AccountantName = "prv",
        run_id: str,
        round: int = 0,
    ) -> Reservation:
        """Check the planned act against the limit and, if it fits, durably record it as spent.

        ``event=None`` is a non-private act (infinite epsilon): it only fits an explicit ``limit=None``.
        Raises BudgetExhaustedError (the ledger unchanged) if the projection exceeds ``limit``.
        """
        _check_request(dataset, event, delta, limit)
        with self._locked():
            snapshot = self.snapshot()
            prior = snapshot.reservations(dataset.fingerprint)
            _check_consistent(dataset, prior, delta, accountant)
            before = epsilon_of(prior, delta=delta, accountant=accountant)
            record = self._next_reserve(dataset, event, delta, limit, accountant, run_id, round)
            after = epsilon_of([*prior, record], delta=delta, accountant=accountant)
            if limit is not None and after > limit:
                cost = "an infinite epsilon (no privacy)" if event is None else f"epsilon {after:.4g}"
                raise BudgetExhaustedError(
                    f"privacy budget exhausted for dataset {dataset.dataset_id} ({dataset.fingerprint[:12]}): "
                    f"spent epsilon {before:.4g} at delta {delta:g} in {len(prior)} event(s); this round "
                    f"({_describe(event)}) would bring it to {cost}, over the limit {limit:g}. Nothing was trained."
                )
            sealed = self._append(snapshot, record)
        return Reservation(record=sealed, epsilon_before=before, epsilon_after=after)

    def commit(
        self, reservation: Reservation, *, examples_seen: int | None = None, empty_batches: int | None = None
    ) -> None:
        """Record that the reserved act completed (call before its result leaves the site)."""
        with self._locked():
            snapshot = self.snapshot()
            if reservation.event_id not in {r.event_id for r in snapshot.reservations()}:
                raise LedgerError(f"{self.path}: no reservation {reservation.event_id} to commit")
            if reservation.event_id in snapshot.committed:
                raise LedgerError(f"{self.path}: reservation {reservation.event_id} is already committed")
            record = CommitRecord(
                seq=0,  # placeholder: _append seals seq, prev_hash and hash
                prev_hash=GENESIS_HASH,
                created_at=_now(),
                event_id=reservation.event_id,
                examples_seen=examples_seen,
                empty_batches=empty_batches,
            )
            self._append(snapshot, record)

    @contextmanager
    def spending(
        self,
        *,
        dataset: DatasetRef,
        event: DpSgdEvent | None,
        delta: float,
        limit: float | None,
        accountant: AccountantName = "prv",
        run_id: str,
        round: int = 0,
    ) -> Iterator[Reservation]:
        """Reserve, run the body, commit. If the body fails, the reservation stays (and counts as spent)."""
        reservation = self.reserve(
            dataset=dataset, event=event, delta=delta, limit=limit, accountant=accountant, run_id=run_id, round=round
        )
        yield reservation
        self.commit(reservation)

    def calibrate(
        self,
        *,
        dataset: DatasetRef,
        limit: float,
        delta: float,
        sample_rate: float,
        steps: int,
        rounds: int,
        max_grad_norm: float,
        accountant: AccountantName = "prv",
    ) -> float:
        """Smallest sigma that keeps this dataset's whole plan within ``limit``.

        The plan is the spend so far plus ``rounds`` rounds of ``steps`` steps at ``sample_rate``; raises
        PrivacyParameterError if no sigma fits, BudgetExhaustedError if the dataset was trained on without privacy.
        """
        from common.privacy.calibration import calibrate_noise_multiplier

        prior = self.snapshot().reservations(dataset.fingerprint)
        _check_consistent(dataset, prior, delta, accountant)
        if any(r.mechanism == NON_PRIVATE for r in prior):
            raise BudgetExhaustedError(
                f"dataset {dataset.dataset_id} ({dataset.fingerprint[:12]}) was trained on without privacy; "
                "no noise level can make further training private"
            )
        return calibrate_noise_multiplier(
            target_epsilon=limit,
            delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            rounds=rounds,
            max_grad_norm=max_grad_norm,
            prior=[e for r in prior if (e := r.dp_event()) is not None],
            accountant=get_accountant(accountant),
        )

    # ----------------------------------------------------------------------------------------------- internals
    @contextmanager
    def _locked(self) -> Iterator[None]:
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

    def _next_reserve(
        self,
        dataset: DatasetRef,
        event: DpSgdEvent | None,
        delta: float,
        limit: float | None,
        accountant: AccountantName,
        run_id: str,
        round: int,
    ) -> ReserveRecord:
        mechanism_fields: dict[str, object] = (
            {"mechanism": NON_PRIVATE} if event is None else {"mechanism": MECHANISM, **event.model_dump()}
        )
        return ReserveRecord(
            seq=0,  # placeholder: _append seals seq, prev_hash and hash
            prev_hash=GENESIS_HASH,
            created_at=_now(),
            event_id=str(uuid.uuid4()),
            dataset_id=dataset.dataset_id,
            dataset_fingerprint=dataset.fingerprint,
            run_id=run_id,
            round=round,
            delta=delta,
            limit_epsilon=limit,
            accountant=accountant,
            **mechanism_fields,
        )

    def _seal(self, record: RecordT, prev_hash: str) -> RecordT:
        unsigned = record.model_copy(update={"prev_hash": prev_hash, "hash": "", "signature": None})
        digest = record_hash(unsigned)
        signature = sign_hash(self.signing_key, digest) if self.signing_key is not None else None
        return unsigned.model_copy(update={"hash": digest, "signature": signature})

    def _append(self, snapshot: LedgerSnapshot, record: RecordT) -> RecordT:
        """Seal ``record`` after the snapshot's last record and make it durable; return the sealed record.

        The ledger file is replaced atomically first, then the head anchor; a crash between the two leaves the
        anchor one record behind, which verification accepts (it only refuses an anchor AHEAD of the file).
        """
        header = snapshot.header
        new_lines: list[LedgerRecordT] = []
        if header is None:
            header = self._seal(
                HeaderRecord(
                    seq=0,
                    prev_hash=GENESIS_HASH,
                    created_at=_now(),
                    ledger_id=str(uuid.uuid4()),
                    public_key=public_key_text(self.signing_key.public_key()) if self.signing_key else None,
                ),
                GENESIS_HASH,
            )
            new_lines.append(header)
        elif header.public_key is not None:
            if self.signing_key is None:
                raise LedgerError(f"{self.path}: this ledger is signed; pass its signing key to write to it")
            if public_key_text(self.signing_key.public_key()) != header.public_key:
                raise LedgerError(f"{self.path}: the signing key given is not the key this ledger is signed with")
        elif self.signing_key is not None:
            raise LedgerError(f"{self.path}: this ledger was created unsigned; it cannot switch to signing")
        last = new_lines[-1] if new_lines else snapshot.records[-1]
        sealed = self._seal(record.model_copy(update={"seq": last.seq + 1}), last.hash)
        new_lines.append(sealed)
        existing = self.path.read_bytes() if self.path.exists() else b""
        addition = "".join(encode_record(r) + "\n" for r in new_lines).encode()
        atomic_write_bytes(self.path, existing + addition)
        head = _Head(seq=sealed.seq, hash=sealed.hash, ledger_id=header.ledger_id)
        if self.signing_key is not None:
            head = head.model_copy(update={"signature": sign_hash(self.signing_key, head.signed_message())})
        atomic_write_bytes(head_path(self.path), (head.model_dump_json() + "\n").encode())
        return sealed


def read_unverified(path: Path) -> LedgerSnapshot:
    """Parse a ledger WITHOUT checking its chain, signatures or anchor (for showing a damaged ledger to an auditor).

    Unparseable files still raise LedgerCorruptError naming the line; training never uses this function.
    """
    records = _parse(path)
    committed = frozenset(r.event_id for r in records if isinstance(r, CommitRecord))
    return LedgerSnapshot(path=path, records=tuple(records), committed=committed)


def _describe(event: DpSgdEvent | None) -> str:
    if event is None:
        return "non-private training"
    return f"sigma {event.noise_multiplier:.4g}, sample rate {event.sample_rate:.4g}, {event.steps} steps"


def _check_request(dataset: DatasetRef, event: DpSgdEvent | None, delta: float, limit: float | None) -> None:
    check_delta(delta)
    if dataset.num_examples < 1:
        raise PrivacyParameterError(f"dataset {dataset.dataset_id} has no examples")
    if delta >= 1.0 / dataset.num_examples:
        raise PrivacyParameterError(
            f"delta {delta:g} is not below 1/N = {1.0 / dataset.num_examples:.3g} for dataset {dataset.dataset_id} "
            f"(N = {dataset.num_examples}): such a delta permits releasing a whole record; choose a smaller delta"
        )
    if limit is not None and not (math.isfinite(limit) and limit > 0):
        raise PrivacyParameterError(f"epsilon limit must be a finite number > 0; got {limit}")
    if event is not None and event.noise_multiplier <= 0:
        raise PrivacyParameterError(f"noise multiplier must be > 0 for a private round; got {event.noise_multiplier}")


def _check_consistent(
    dataset: DatasetRef, prior: Sequence[ReserveRecord], delta: float, accountant: AccountantName
) -> None:
    """A dataset is accounted at one delta with one accountant: the first event's.

    Switching either would make earlier figures incomparable (and a larger delta or looser accountant could hide
    spend).
    """
    if not prior:
        return
    first = prior[0]
    if first.delta != delta:
        raise PrivacyParameterError(
            f"dataset {dataset.dataset_id} is accounted at delta {first.delta:g} in this ledger; got delta {delta:g}"
        )
    if first.accountant != accountant:
        raise PrivacyParameterError(
            f"dataset {dataset.dataset_id} is accounted with the {first.accountant} accountant in this ledger; "
            f"got {accountant}"
        )


def _parse(path: Path) -> list[LedgerRecordT]:
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
    records: list[LedgerRecordT] = []
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


def _verify_chain(path: Path, records: Sequence[LedgerRecordT], trusted: Ed25519PublicKey | None) -> set[str]:
    """Raise LedgerTamperError at the first record that breaks the chain; return committed event ids."""
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
        name = _record_name(record, line)
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
    return committed


def _verify_head(path: Path, records: Sequence[LedgerRecordT]) -> None:
    anchor = head_path(path)
    header = records[0]
    assert isinstance(header, HeaderRecord)
    if not anchor.exists():
        # The first write creates the header and the first record together, then the anchor: a crash in between
        # leaves exactly two records and no anchor. Anything else without an anchor was tampered with.
        if len(records) == 2:
            return
        raise LedgerTamperError(f"{anchor}: the head anchor is missing (it records where the ledger ends)")
    try:
        head = _Head.model_validate_json(anchor.read_bytes())
    except ValidationError:
        raise LedgerTamperError(f"{anchor}: the head anchor is unreadable") from None
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


def _record_name(record: LedgerRecordT, line: int) -> str:
    if isinstance(record, ReserveRecord):
        return f"reserve record seq {record.seq} (event {record.event_id}, run {record.run_id}, round {record.round})"
    if isinstance(record, CommitRecord):
        return f"commit record seq {record.seq} (event {record.event_id})"
    return f"header record seq {record.seq}"
