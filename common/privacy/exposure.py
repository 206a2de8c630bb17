"""Exposure classes: records that share the same privacy history, and what each class has spent.

A record's epsilon is the composition of every event whose record set contained it (DP composes per individual;
see Feldman & Zrnic, NeurIPS 2021, "Individual Privacy Accounting via a Renyi Filter", for accounting that follows
each record rather than each dataset). Records are therefore partitioned by WHICH recorded sets contain them: all
records of one class have the same events, hence the same epsilon, and a ledger of 100,000 records with 50 events
typically has a handful of classes. The budget limit applies to the most exposed record, i.e. the class with the
largest epsilon.

Legacy events (written before per-record budgets, with no record set) are charged to the set an
:class:`~common.privacy.records.AttributeRecord` names for their dataset, or else to EVERY record: never less than
they may have touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from common.privacy.accountant import AccountantName, get_accountant
from common.privacy.events import DpSgdEvent
from common.privacy.record_sets import RecordSets
from common.privacy.records import AnyRecord, AttributeRecord, ReserveRecord

#: Events about to be spent: one, several in order, or none.
Planned = DpSgdEvent | Sequence[DpSgdEvent] | None


@dataclass(frozen=True)
class Charge:
    """One reserved event and the records it is charged to: a record set's id, or None for every record."""

    event: ReserveRecord
    record_set: str | None


@dataclass(frozen=True)
class ExposureClass:
    """``records`` records (of the set asked about) whose privacy history is exactly ``events``."""

    records: int
    events: tuple[ReserveRecord, ...]

    def epsilon(self, *, delta: float, accountant: AccountantName, planned: Planned = None) -> float:
        """Epsilon of these records' history (plus ``planned``), recomputed; infinite after any non-private act."""
        events = [record.dp_event() for record in self.events]
        if any(event is None for event in events):
            return math.inf
        history = [event for event in events if event is not None]
        history.extend([planned] if isinstance(planned, DpSgdEvent) else planned or ())
        return get_accountant(accountant).epsilon(history, delta=delta)

    @property
    def non_private(self) -> bool:
        """Whether any event of this history trained without privacy."""
        return any(record.dp_event() is None for record in self.events)


def epsilon_of(reservations: Sequence[ReserveRecord], *, delta: float, accountant: AccountantName) -> float:
    """Epsilon of a history of reserved events at ``delta`` (infinite if any was non-private)."""
    return ExposureClass(0, tuple(reservations)).epsilon(delta=delta, accountant=accountant)


def charges(records: Sequence[AnyRecord]) -> list[Charge]:
    """Every reserve of a ledger with the records it is charged to (legacy ones through attributions)."""
    attributed: Mapping[str, str] = {
        r.legacy_fingerprint: r.record_set for r in records if isinstance(r, AttributeRecord)
    }
    result = []
    for record in records:
        if isinstance(record, ReserveRecord):
            target = record.record_set or attributed.get(record.dataset_fingerprint)
            result.append(Charge(record, target))
    return result


def partition(query: np.ndarray, charged: Sequence[Charge], sets: RecordSets) -> list[ExposureClass]:
    """The exposure classes of the records ``query`` (sorted unique ids), largest epsilon not yet known.

    Every record of ``query`` is in exactly one class; a record no event touched has an empty history.
    """
    if len(query) == 0:
        return []
    distinct = sorted({c.record_set for c in charged if c.record_set is not None})
    universal = tuple(c.event for c in charged if c.record_set is None)
    if not distinct:
        return [ExposureClass(len(query), universal)]
    membership = sets.membership(query, distinct)
    packed = np.ascontiguousarray(np.packbits(membership, axis=0).T)  # one row of bits per record
    rows = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
    _, first, counts = np.unique(rows, return_index=True, return_counts=True)
    classes = []
    for index, count in zip(first, counts, strict=True):
        member = {set_id for i, set_id in enumerate(distinct) if membership[i, index]}
        events = tuple(c.event for c in charged if c.record_set is None or c.record_set in member)
        classes.append(ExposureClass(int(count), events))
    return classes


def most_exposed(
    classes: Sequence[ExposureClass],
    *,
    delta: float,
    accountant: AccountantName,
    planned: Planned = None,
) -> tuple[float, ExposureClass | None]:
    """The largest epsilon among ``classes`` (each with ``planned`` added) and its class; (0, None) if none."""
    worst: tuple[float, ExposureClass | None] = (0.0, None)
    for exposure in classes:
        epsilon = exposure.epsilon(delta=delta, accountant=accountant, planned=planned)
        if worst[1] is None or epsilon > worst[0]:
            worst = (epsilon, exposure)
    return worst
