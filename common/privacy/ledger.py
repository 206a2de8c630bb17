"""The per-site privacy ledger's API and policy: what each RECORD may spend, checked before every spend.

Promise to a data owner: no record of the site's data spends more than the site's limit, however many rounds, runs,
servers, processes, files, encodings or labellings touch it. How the ledger keeps it:

* **Per record.** Every training event is charged to the set of records it covered (ids under the site's secret
  record key, :mod:`common.privacy.record_ids`); a record's epsilon composes every event whose set contained it
  (:mod:`common.privacy.exposure`). Relabelling, re-encoding, reordering, duplicating, subsetting or growing a
  dataset changes no record's history, so it buys no budget. The limit applies to the most exposed record.
* **Recomputed, never stored.** Epsilon is recomputed from the recorded mechanisms on every check.
* **Check before spend, write ahead.** :meth:`PrivacyLedger.reserve` projects the most exposed record's epsilon
  with the planned event, refuses with :class:`~common.errors.BudgetExhaustedError` (writing nothing) if it would
  pass the limit, and otherwise makes the reservation durable BEFORE returning, i.e. before training starts.
  :meth:`PrivacyLedger.commit` records completion before any update leaves the site. A reserve without a commit
  counts as spent, so a crash at any moment leaves the ledger saying at least what was really spent.
* **One accounting per ledger.** Every event is accounted at the delta and with the accountant of the ledger's
  first event (a record's events must compose at one delta).
* **Witnessed.** :meth:`PrivacyLedger.head` and :meth:`PrivacyLedger.extension_proof` let a server that saw this
  ledger's head before check that the ledger still contains it and only grew since (:mod:`common.privacy.chain`);
  :meth:`PrivacyLedger.check_witness` refuses, before training, a ledger that lost a witnessed head.
* **Serialised and tamper-evident.** Read-verify-append runs under an exclusive file lock
  (:mod:`common.privacy.storage`); every read verifies the chain, signatures, references and head anchor
  (:mod:`common.privacy.verification`) and fails closed.

Legacy ledgers (written before per-record budgets) keep verifying; they are upgraded in place on their next write
(an ``upgrade`` record), and their events are charged as :mod:`common.privacy.exposure` explains.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.errors import BudgetExhaustedError, LedgerError
from common.privacy.accountant import AccountantName, get_accountant
from common.privacy.budget import BudgetStatus
from common.privacy.calibration import calibrate_run
from common.privacy.chain import GENESIS_HASH, LedgerHead
from common.privacy.datasets import DatasetRef, LegacySource, dataset_classes, preceding_records, record_key
from common.privacy.events import MECHANISM, DpSgdEvent
from common.privacy.exposure import most_exposed
from common.privacy.heads import check_contains, extension_proof, ledger_head
from common.privacy.policy import accounting, budget_status, check_consistent, check_request, describe
from common.privacy.record_ids import RecordKey, as_set
from common.privacy.records import (
    LABEL_HISTOGRAM,
    NON_PRIVATE,
    AttributeRecord,
    CommitRecord,
    Purpose,
    ReserveRecord,
    timestamp,
)
from common.privacy.storage import LedgerFile, LedgerSnapshot
from common.privacy.verification import verified_snapshot

__all__ = ["DatasetRef", "LegacySource", "PrivacyLedger", "Reservation"]


@dataclass(frozen=True)
class Reservation:
    """A reserved spend: the durable record, and the most exposed record's epsilon before and after it."""

    record: ReserveRecord
    epsilon_before: float
    epsilon_after: float

    @property
    def event_id(self) -> str:
        """The reservation's id (what its commit refers to)."""
        return self.record.event_id


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
        self._file = LedgerFile(self.path, signing_key=signing_key, lock_timeout=lock_timeout)

    # ----------------------------------------------------------------------------------------------- identity
    def snapshot(self) -> LedgerSnapshot:
        """Read and fully verify the ledger (parse, hash chain, signatures, references, head anchor)."""
        return verified_snapshot(self.path, trusted=self.trusted_public_key)

    def record_key(self) -> RecordKey:
        """The site's record key (:func:`common.privacy.datasets.record_key`)."""
        return record_key(self.path, self.snapshot())

    def dataset(
        self, texts: Iterable[str], *, dataset_id: str, source: tuple[str, Iterable[str]] | None = None
    ) -> DatasetRef:
        """The records of ``texts`` (ids under this ledger's record key; duplicates are one record).

        ``source`` is the whole file they came from: (its v1 content fingerprint, all its texts).
        """
        key = self.record_key()
        legacy = None if source is None else LegacySource(source[0], as_set(key.ids(source[1])))
        return DatasetRef(dataset_id, as_set(key.ids(texts)), legacy)

    def head(self) -> LedgerHead | None:
        """The ledger's id and last record (None for a ledger that does not exist yet)."""
        return ledger_head(self.snapshot())

    def extension_proof(self, since: LedgerHead) -> list[str]:
        """The proof that the current head extends ``since`` (:func:`common.privacy.heads.extension_proof`)."""
        return extension_proof(self.snapshot(), since)

    def check_witness(self, since: LedgerHead) -> None:
        """Refuse (LedgerTamperError) a ledger that no longer contains a head a witness saw before."""
        check_contains(self.snapshot(), since)

    # ----------------------------------------------------------------------------------------------- questions
    def spent(self, dataset: DatasetRef, *, delta: float, accountant: AccountantName = "prv") -> float:
        """Epsilon spent so far by ``dataset``'s most exposed record (reserved counts as spent)."""
        return self.status(dataset, delta=delta, accountant=accountant, limit=None).spent

    def status(
        self, dataset: DatasetRef, *, delta: float, accountant: AccountantName = "prv", limit: float | None
    ) -> BudgetStatus:
        """What the most exposed of ``dataset``'s records has spent of ``limit`` (the ledger's delta/accountant)."""
        snapshot = self.snapshot()
        delta, accountant = accounting(snapshot, delta, accountant)
        classes = dataset_classes(snapshot, dataset)
        return budget_status(dataset, classes, delta, accountant, limit)

    def projected(
        self,
        dataset: DatasetRef,
        *,
        events: Sequence[DpSgdEvent] | None,
        delta: float,
        accountant: AccountantName = "prv",
    ) -> tuple[float, float]:
        """The most exposed record's epsilon now and after ``events`` (None: non-private, infinite); writes nothing.

        What :meth:`reserve` would check, asked before committing to a plan of several reservations.
        """
        snapshot = self.snapshot()
        check_consistent(snapshot, delta, accountant)
        additions = preceding_records(snapshot, dataset, record_key(self.path, snapshot))
        classes = dataset_classes(snapshot, dataset, additions)
        before = most_exposed(classes, delta=delta, accountant=accountant)[0]
        if events is None:
            return before, math.inf
        return before, most_exposed(classes, delta=delta, accountant=accountant, planned=events)[0]

    def check_trainable(
        self, dataset: DatasetRef, *, delta: float, accountant: AccountantName = "prv", limit: float | None
    ) -> BudgetStatus:
        """May ``dataset`` train privately at all? Return its status if so.

        Raises BudgetExhaustedError, naming the dataset, the ledger and the reason, if any of its records was
        trained without privacy or already spent ``limit``. Whether one more round fits is :meth:`reserve`'s
        question, answered with the round's own cost.
        """
        status = self.status(dataset, delta=delta, accountant=accountant, limit=limit)
        self._refuse(status)
        return status

    def calibrate(
        self,
        *,
        dataset: DatasetRef,
        limit: float | None,
        delta: float,
        sample_rate: float,
        steps: int,
        rounds: int,
        max_grad_norm: float,
        accountant: AccountantName = "prv",
        run_id: str | None = None,
        run_epsilon: float | None = None,
    ) -> float:
        """Smallest sigma that keeps a plan of ``rounds`` x ``steps`` steps within every budget, for every record.

        * ``limit``: the lifetime limit, given what each of the dataset's records spent before (the largest sigma
          over its exposure classes). With ``run_id``, that run's own events are left out: its earlier rounds are
          part of its plan, so a resumed run recomputes the same sigma. Its label-histogram releases are not part of
          the plan: they stay in the prior (the run's histogram is spent before its training is calibrated).
        * ``run_epsilon``: what the run alone may spend (e.g. a server's per-run target), with no prior.

        Raises BudgetExhaustedError if records were trained on without privacy, PrivacyParameterError if no sigma
        fits or if ``delta`` or ``accountant`` differ from the ledger's.
        """
        snapshot = self.snapshot()
        check_consistent(snapshot, delta, accountant)
        classes = dataset_classes(snapshot, dataset)
        self._refuse(budget_status(dataset, classes, delta, accountant, None))  # only a non-private history refuses
        # Records with the same history (without this run's events) need the same sigma: calibrate once per history.
        histories = {
            tuple(r for r in c.events if r.run_id != run_id or r.purpose == LABEL_HISTOGRAM) for c in classes
        } or {()}
        sigmas = []
        for history in histories:
            sigmas.append(
                calibrate_run(
                    limit=limit,
                    run_epsilon=run_epsilon,
                    prior=[e for r in history if (e := r.dp_event()) is not None],
                    delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    rounds=rounds,
                    max_grad_norm=max_grad_norm,
                    accountant=get_accountant(accountant),
                )
            )
        return max(sigmas)

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
        purpose: Purpose | None = None,
    ) -> Reservation:
        """Check the planned act against the limit for every record and, if it fits, durably record it as spent.

        ``event=None`` is a non-private act (infinite epsilon): it only fits an explicit ``limit=None``.
        ``purpose`` is recorded for auditors (None: training, the field left out of the record).
        Raises BudgetExhaustedError (the ledger unchanged) if the most exposed record would pass ``limit``.
        """
        check_request(dataset, event, delta, limit)
        with self._file.locked():
            snapshot = self.snapshot()
            check_consistent(snapshot, delta, accountant)
            additions = preceding_records(snapshot, dataset, record_key(self.path, snapshot))
            classes = dataset_classes(snapshot, dataset, additions)
            before = most_exposed(classes, delta=delta, accountant=accountant)[0]
            if event is None:
                after, worst = math.inf, None
            else:
                after, worst = most_exposed(classes, delta=delta, accountant=accountant, planned=event)
            if limit is not None and after > limit:
                history = len(worst.events) if worst is not None else 0
                cost = "an infinite epsilon (no privacy)" if event is None else f"epsilon {after:.4g}"
                raise BudgetExhaustedError(
                    f"privacy budget exhausted for dataset {dataset.dataset_id} ({dataset.num_examples} records): "
                    f"its most exposed records have spent epsilon {before:.4g} at delta {delta:g} in {history} "
                    f"event(s); this round ({describe(event)}) would bring them to {cost}, over the limit "
                    f"{limit:g}. Nothing was {'released' if purpose == LABEL_HISTOGRAM else 'trained'}."
                )
            mechanism: dict[str, object] = (
                {"mechanism": NON_PRIVATE} if event is None else {"mechanism": MECHANISM, **event.model_dump()}
            )
            record = ReserveRecord(
                seq=0,  # placeholder: the storage layer seals seq, prev_hash and hash
                prev_hash=GENESIS_HASH,
                created_at=timestamp(),
                event_id=str(uuid.uuid4()),
                dataset_id=dataset.dataset_id,
                dataset_fingerprint=dataset.fingerprint,
                record_set=dataset.fingerprint,
                run_id=run_id,
                round=round,
                delta=delta,
                limit_epsilon=limit,
                accountant=accountant,
                purpose=purpose,
                **mechanism,
            )
            sealed = self._file.append(snapshot, *additions, record)[-1]
        assert isinstance(sealed, ReserveRecord)
        return Reservation(record=sealed, epsilon_before=before, epsilon_after=after)

    def commit(
        self, reservation: Reservation, *, examples_seen: int | None = None, empty_batches: int | None = None
    ) -> None:
        """Record that the reserved act completed (call before its result leaves the site)."""
        with self._file.locked():
            snapshot = self.snapshot()
            if reservation.event_id not in {r.event_id for r in snapshot.reservations()}:
                raise LedgerError(f"{self.path}: no reservation {reservation.event_id} to commit")
            if reservation.event_id in snapshot.committed:
                raise LedgerError(f"{self.path}: reservation {reservation.event_id} is already committed")
            record = CommitRecord(
                seq=0,  # placeholder: the storage layer seals seq, prev_hash and hash
                prev_hash=GENESIS_HASH,
                created_at=timestamp(),
                event_id=reservation.event_id,
                examples_seen=examples_seen,
                empty_batches=empty_batches,
            )
            self._file.append(snapshot, record)

    def attribute(self, dataset: DatasetRef) -> bool:
        """Charge the legacy events of ``dataset``'s v1 fingerprint to its records instead of to every record.

        Legacy events (recorded per dataset before per-record budgets) count against EVERY record until the data
        they were recorded for is seen again: its v1 fingerprint proves which records they covered. Returns True if
        an attribution was written; nothing is spent.
        """
        with self._file.locked():
            snapshot = self.snapshot()
            additions = preceding_records(snapshot, dataset, record_key(self.path, snapshot))
            if not any(isinstance(r, AttributeRecord) for r in additions):
                return False
            self._file.append(snapshot, *additions)
            return True

    # ----------------------------------------------------------------------------------------------- internals
    def _refuse(self, status: BudgetStatus) -> None:
        reason = status.refusal()
        if reason is not None:
            raise BudgetExhaustedError(f"{reason} (ledger {self.path})")
