"""The per-site privacy ledger's API and policy: what a dataset may spend, checked before every spend.

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
* **One accounting per dataset.** A dataset is accounted at the delta and with the accountant of its first event;
  a request with another delta or accountant is refused.
* **Budget questions answered here, once.** :meth:`PrivacyLedger.status` (what was spent of the limit),
  :meth:`PrivacyLedger.check_trainable` (may the dataset train privately at all) and
  :meth:`PrivacyLedger.calibrate` (the noise that fits a plan, excluding the current run's own rounds) are what
  sites and the CLI ask; none of them re-derives the answer.
* **Serialised and tamper-evident.** Read-verify-append runs under an exclusive file lock
  (:mod:`common.privacy.storage`, which also owns the file format's bytes and the head anchor); every read verifies
  the hash chain, signatures and head anchor (:mod:`common.privacy.verification`) and fails closed.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.errors import BudgetExhaustedError, LedgerError, PrivacyParameterError
from common.privacy.accountant import AccountantName, check_delta, get_accountant
from common.privacy.budget import BudgetStatus
from common.privacy.calibration import calibrate_run
from common.privacy.events import MECHANISM, DpSgdEvent
from common.privacy.records import GENESIS_HASH, NON_PRIVATE, CommitRecord, ReserveRecord, timestamp
from common.privacy.storage import LedgerFile, LedgerSnapshot
from common.privacy.verification import verified_snapshot


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


def epsilon_of(reservations: Sequence[ReserveRecord], *, delta: float, accountant: AccountantName) -> float:
    """Epsilon spent by ``reservations`` at ``delta`` (infinite if any was non-private)."""
    events: list[DpSgdEvent] = []
    for record in reservations:
        event = record.dp_event()
        if event is None:
            return math.inf
        events.append(event)
    return get_accountant(accountant).epsilon(events, delta=delta)


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

    # ----------------------------------------------------------------------------------------------- questions
    def snapshot(self) -> LedgerSnapshot:
        """Read and fully verify the ledger (parse, hash chain, signatures, head anchor)."""
        return verified_snapshot(self.path, trusted=self.trusted_public_key)

    def spent(self, fingerprint: str, *, delta: float, accountant: AccountantName = "prv") -> float:
        """Epsilon spent so far on the dataset ``fingerprint`` at ``delta`` (reserved counts as spent)."""
        return epsilon_of(self.snapshot().reservations(fingerprint), delta=delta, accountant=accountant)

    def status(
        self, dataset: DatasetRef, *, delta: float, accountant: AccountantName = "prv", limit: float | None
    ) -> BudgetStatus:
        """What ``dataset`` has spent of ``limit``, accounted as the dataset is accounted.

        A dataset with events is reported at its first event's delta and accountant (the ones every spend on it
        uses); ``delta`` and ``accountant`` apply only to a dataset the ledger has not seen yet.
        """
        return _status(self.snapshot().reservations(dataset.fingerprint), dataset, delta, accountant, limit)

    def check_trainable(
        self, dataset: DatasetRef, *, delta: float, accountant: AccountantName = "prv", limit: float | None
    ) -> BudgetStatus:
        """May ``dataset`` train privately at all? Return its status if so.

        Raises BudgetExhaustedError, naming the dataset, the ledger and the reason, if the dataset was ever trained
        without privacy (its epsilon is infinite for good) or has already spent ``limit``. Whether one more round
        fits is :meth:`reserve`'s question, answered with the round's own cost.
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
        """Smallest sigma that keeps a plan of ``rounds`` rounds x ``steps`` steps within every budget given.

        * ``limit``: the dataset's lifetime limit, given what was spent before. With ``run_id``, the events of that
          run are left out: they are part of the run's own plan, so its earlier rounds do not lower its sigma, and a
          resumed run recomputes the same sigma. Without ``run_id`` every recorded event counts.
        * ``run_epsilon``: what the run alone may spend (e.g. a server's per-run target), with no prior.

        Raises BudgetExhaustedError if the dataset was trained on without privacy, PrivacyParameterError if no
        sigma fits or if ``delta`` or ``accountant`` differ from the dataset's.
        """
        prior = self.snapshot().reservations(dataset.fingerprint)
        _check_consistent(dataset, prior, delta, accountant)
        self._refuse(_status(prior, dataset, delta, accountant, None))  # only a non-private history refuses
        others = [e for r in prior if r.run_id != run_id and (e := r.dp_event()) is not None]
        return calibrate_run(
            limit=limit,
            run_epsilon=run_epsilon,
            prior=others,
            delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            rounds=rounds,
            max_grad_norm=max_grad_norm,
            accountant=get_accountant(accountant),
        )

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
        with self._file.locked():
            snapshot = self.snapshot()
            prior = snapshot.reservations(dataset.fingerprint)
            _check_consistent(dataset, prior, delta, accountant)
            before = epsilon_of(prior, delta=delta, accountant=accountant)
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
                run_id=run_id,
                round=round,
                delta=delta,
                limit_epsilon=limit,
                accountant=accountant,
                **mechanism,
            )
            after = epsilon_of([*prior, record], delta=delta, accountant=accountant)
            if limit is not None and after > limit:
                cost = "an infinite epsilon (no privacy)" if event is None else f"epsilon {after:.4g}"
                raise BudgetExhaustedError(
                    f"privacy budget exhausted for dataset {dataset.dataset_id} ({dataset.fingerprint[:12]}): "
                    f"spent epsilon {before:.4g} at delta {delta:g} in {len(prior)} event(s); this round "
                    f"({_describe(event)}) would bring it to {cost}, over the limit {limit:g}. Nothing was trained."
                )
            sealed = self._file.append(snapshot, record)
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

    def _refuse(self, status: BudgetStatus) -> None:
        reason = status.refusal()
        if reason is not None:
            raise BudgetExhaustedError(f"{reason} (ledger {self.path})")


def _status(
    prior: Sequence[ReserveRecord],
    dataset: DatasetRef,
    delta: float,
    accountant: AccountantName,
    limit: float | None,
) -> BudgetStatus:
    if prior:  # a dataset is accounted at its first event's delta and accountant
        delta, accountant = prior[0].delta, prior[0].accountant
    return BudgetStatus(
        dataset_id=dataset.dataset_id,
        fingerprint=dataset.fingerprint,
        spent=epsilon_of(prior, delta=delta, accountant=accountant),
        limit=limit,
        events=len(prior),
        non_private=any(r.mechanism == NON_PRIVATE for r in prior),
        delta=delta,
        accountant=accountant,
    )


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
