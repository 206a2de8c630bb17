"""A dataset as the ledger sees it: a set of record ids, the site's record key, and what must precede its spend.

:class:`DatasetRef` is what a spend is charged to: sorted unique record ids (:mod:`common.privacy.record_ids`), and,
when known, the whole file they came from (:class:`LegacySource`), whose v1 fingerprint lets events recorded before
per-record budgets be attributed to the records they covered. :func:`preceding_records` says which records a reserve
on a dataset must be appended with (the ledger's upgrade, the dataset's record set, an attribution), and
:func:`dataset_classes` which exposure classes the dataset's records fall into.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from common.errors import LedgerError, LedgerTamperError
from common.privacy.chain import GENESIS_HASH
from common.privacy.exposure import ExposureClass, charges, partition
from common.privacy.record_ids import RecordKey, key_path, set_digest
from common.privacy.records import AnyRecord, AttributeRecord, RecordSetRecord, UpgradeRecord, timestamp
from common.privacy.storage import LedgerSnapshot


@dataclass(frozen=True, eq=False)
class LegacySource:
    """A whole data file as legacy ledgers knew it: its v1 content fingerprint and every record it holds.

    Legacy events were charged to a file's fingerprint; seeing the file again proves which records they covered.
    """

    fingerprint: str
    records: np.ndarray


@dataclass(frozen=True, eq=False)
class DatasetRef:
    """The records a spend is charged to (sorted unique ids), a readable id, and the file they came from, if known.

    Build it with :meth:`PrivacyLedger.dataset` (ids under the ledger's record key). ``legacy`` lets the ledger
    attribute events recorded before per-record budgets to the records they covered.
    """

    dataset_id: str
    records: np.ndarray
    legacy: LegacySource | None = None

    @cached_property
    def fingerprint(self) -> str:
        """The content address of the record set (what reserve records name)."""
        return set_digest(self.records)

    @property
    def num_examples(self) -> int:
        """Number of distinct records."""
        return len(self.records)


def record_key(ledger_path: Path, snapshot: LedgerSnapshot) -> RecordKey:
    """The site's record key: created with the ledger's first use, then always the one the ledger commits to.

    A ledger that commits to a key whose file is missing or different is refused: without its key no record
    can be recognised, and a new key would make every record look new.
    """
    path = key_path(ledger_path)
    upgrade = snapshot.upgrade
    if not path.exists():
        if upgrade is not None:
            raise LedgerError(
                f"{path}: the ledger's record key is missing; without it no record can be recognised, so the "
                f"ledger's spend cannot be enforced. Restore the key (back it up with {ledger_path})."
            )
        try:
            return RecordKey.create(path)
        except LedgerError:
            if not path.exists():
                raise
    key = RecordKey.load(path)
    if upgrade is not None and key.key_id != upgrade.record_key_id:
        raise LedgerTamperError(f"{path}: this record key is not the one the ledger {ledger_path} was written with")
    return key


def preceding_records(snapshot: LedgerSnapshot, dataset: DatasetRef, key: RecordKey) -> list[AnyRecord]:
    """What must precede a reserve on ``dataset``: the upgrade, the dataset's record set, its attribution."""
    additions: list[AnyRecord] = []
    if snapshot.upgrade is None:
        upgrade = UpgradeRecord(seq=0, prev_hash=GENESIS_HASH, created_at=timestamp(), record_key_id=key.key_id)
        additions.append(upgrade)
    sets = snapshot.sets
    for ids in (dataset.records, None if dataset.legacy is None else dataset.legacy.records):
        stored = None if ids is None else sets.encode(ids)
        if stored is not None:
            additions.append(stored)
            sets = sets.extended([stored])
    legacy = dataset.legacy
    attributed = {r.legacy_fingerprint for r in snapshot.records if isinstance(r, AttributeRecord)}
    reserved = {r.dataset_fingerprint for r in snapshot.reservations() if r.record_set is None}
    if legacy is not None and legacy.fingerprint in reserved - attributed:
        attribution = AttributeRecord(
            seq=0,
            prev_hash=GENESIS_HASH,
            created_at=timestamp(),
            legacy_fingerprint=legacy.fingerprint,
            record_set=set_digest(legacy.records),
        )
        additions.append(attribution)
    return additions


def dataset_classes(
    snapshot: LedgerSnapshot, dataset: DatasetRef, additions: Sequence[AnyRecord] = ()
) -> list[ExposureClass]:
    """The exposure classes of ``dataset``'s records, as if ``additions`` were already appended."""
    records = [*snapshot.records, *additions]
    sets = snapshot.sets.extended(r for r in additions if isinstance(r, RecordSetRecord))
    return partition(dataset.records, charges(records), sets)
