"""The ledger's rules for a request: parameter domains, one accounting per ledger, and budget status.

A delta of at least 1/N permits releasing a whole record, so it is refused; every event of a ledger is accounted at
one delta with one accountant (a record's events compose at one delta, and switching either could hide spend).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from common.errors import PrivacyParameterError
from common.privacy.accountant import AccountantName, check_delta
from common.privacy.budget import BudgetStatus
from common.privacy.datasets import DatasetRef
from common.privacy.events import DpSgdEvent
from common.privacy.exposure import ExposureClass, most_exposed
from common.privacy.storage import LedgerSnapshot


def budget_status(
    dataset: DatasetRef, classes: Sequence[ExposureClass], delta: float, accountant: AccountantName, limit: float | None
) -> BudgetStatus:
    """The most exposed of ``dataset``'s records, of ``classes``: what it spent of ``limit``."""
    spent, worst = most_exposed(classes, delta=delta, accountant=accountant)
    return BudgetStatus(
        dataset_id=dataset.dataset_id,
        fingerprint=dataset.fingerprint,
        records=dataset.num_examples,
        spent=spent,
        limit=limit,
        events=len(worst.events) if worst is not None else 0,
        classes=len(classes),
        non_private=any(c.non_private for c in classes),
        delta=delta,
        accountant=accountant,
    )


def describe(event: DpSgdEvent | None) -> str:
    """How a refusal names a planned event."""
    if event is None:
        return "non-private training"
    return f"sigma {event.noise_multiplier:.4g}, sample rate {event.sample_rate:.4g}, {event.steps} steps"


def check_request(dataset: DatasetRef, event: DpSgdEvent | None, delta: float, limit: float | None) -> None:
    """Raise PrivacyParameterError for a request outside the parameters' domains (before any read or write)."""
    check_delta(delta)
    if dataset.num_examples < 1:
        raise PrivacyParameterError(f"dataset {dataset.dataset_id} has no records")
    if delta >= 1.0 / dataset.num_examples:
        raise PrivacyParameterError(
            f"delta {delta:g} is not below 1/N = {1.0 / dataset.num_examples:.3g} for dataset {dataset.dataset_id} "
            f"(N = {dataset.num_examples}): such a delta permits releasing a whole record; choose a smaller delta"
        )
    if limit is not None and not (math.isfinite(limit) and limit > 0):
        raise PrivacyParameterError(f"epsilon limit must be a finite number > 0; got {limit}")
    if event is not None and event.noise_multiplier <= 0:
        raise PrivacyParameterError(f"noise multiplier must be > 0 for a private round; got {event.noise_multiplier}")


def accounting(snapshot: LedgerSnapshot, delta: float, accountant: AccountantName) -> tuple[float, AccountantName]:
    """The ledger's delta and accountant: its first event's, or the given ones for a ledger without events."""
    first = next(iter(snapshot.reservations()), None)
    return (first.delta, first.accountant) if first is not None else (delta, accountant)


def check_consistent(snapshot: LedgerSnapshot, delta: float, accountant: AccountantName) -> None:
    """Every event of a ledger is accounted at one delta with one accountant: the first event's.

    A record's events compose at one delta; switching either would make earlier figures incomparable (and a larger
    delta or looser accountant could hide spend).
    """
    ledger_delta, ledger_accountant = accounting(snapshot, delta, accountant)
    if ledger_delta != delta:
        raise PrivacyParameterError(f"this ledger is accounted at delta {ledger_delta:g}; got delta {delta:g}")
    if ledger_accountant != accountant:
        raise PrivacyParameterError(
            f"this ledger is accounted with the {ledger_accountant} accountant; got {accountant}"
        )
