"""Record sets in a ledger: decoding the stored sets, and storing a new one compactly.

A set is stored once and referred to by its content address (``set_id``); a set that differs little from one
already stored (a dataset that grew by a month of records) is stored as that base plus what was added and removed.
Decoding checks every set against its address, so an edited id blob is tampering, never a different budget.

In memory, every id any stored set holds is placed once in a sorted *universe*, and each set is a boolean mask over
it: a difference is two mask assignments, membership is an index, and 50 sets of 100,000 records cost 5 MB.
Decoded masks are cached by their record's chain hash: a record is immutable and its hash (checked by
:mod:`common.privacy.verification` before any set is decoded) covers its blobs, so a set decoded and checked once
need not be checked again in the same process.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from common.errors import LedgerTamperError
from common.privacy.chain import GENESIS_HASH
from common.privacy.record_ids import ID_DTYPE, as_set, from_bytes, set_digest
from common.privacy.records import AnyRecord, RecordSetRecord, timestamp

_EMPTY = np.empty(0, dtype=ID_DTYPE)
#: Verified sets by (record hash, universe digest): (mask, ids). Bounded; first in, first out.
_CHECKED: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
_CHECKED_SIZE = 256


def _blob(ids: np.ndarray) -> str:
    return base64.b64encode(as_set(ids).tobytes()).decode("ascii")


def _ids(blob: str | None, where: str) -> np.ndarray:
    if not blob:
        return _EMPTY
    try:
        return as_set(from_bytes(base64.b64decode(blob, validate=True)))
    except (binascii.Error, ValueError):
        raise LedgerTamperError(f"{where}: a record-id blob is not valid base64") from None


class RecordSets:
    """Every record set of a ledger, decoded and checked against its address (in ledger order)."""

    def __init__(self, records: Iterable[AnyRecord], *, source: str = "ledger") -> None:
        stored = [r for r in records if isinstance(r, RecordSetRecord)]
        blobs = {r.seq: (_ids(r.ids, source), _ids(r.added, source), _ids(r.removed, source)) for r in stored}
        parts = [ids for whole, added, _ in blobs.values() for ids in (whole, added) if len(ids)]
        self._universe = as_set(np.concatenate(parts)) if parts else _EMPTY
        self._key = hashlib.sha256(self._universe.tobytes()).hexdigest()
        self._masks: dict[str, np.ndarray] = {}
        self._extra: dict[str, np.ndarray] = {}  # sets not yet appended (see extended): sorted ids
        for record in stored:
            whole, added, removed = blobs[record.seq]
            self._add(record, whole, added, removed, f"{source}: record set seq {record.seq}")

    def _index(self, ids: np.ndarray) -> np.ndarray:
        """Positions of ``ids`` in the universe (every id must be in it)."""
        return np.searchsorted(self._universe, ids)

    def _add(
        self, record: RecordSetRecord, whole: np.ndarray, added: np.ndarray, removed: np.ndarray, where: str
    ) -> None:
        if record.ids is not None:
            mask = np.zeros(len(self._universe), dtype=bool)
            mask[self._index(whole)] = True
        else:
            assert record.base is not None  # RecordSetRecord's validator: one encoding or the other
            if record.base not in self._masks:
                raise LedgerTamperError(f"{where} is based on a set ({record.base[:12]}) the ledger does not hold")
            mask = self._masks[record.base].copy()
            mask[self._index(added)] = True
            stray = removed[~np.isin(removed, self._universe, assume_unique=True)]
            if len(stray):
                raise LedgerTamperError(f"{where} removes records its base never held")
            mask[self._index(removed)] = False
        key = (record.hash, self._key)
        if key not in _CHECKED:
            if int(mask.sum()) != record.count or set_digest(self._universe[mask]) != record.set_id:
                raise LedgerTamperError(f"{where} does not match its address {record.set_id[:12]}: its ids were edited")
            _CHECKED[key] = mask
            if len(_CHECKED) > _CHECKED_SIZE:
                _CHECKED.popitem(last=False)
        self._masks[record.set_id] = mask

    def extended(self, records: Iterable[RecordSetRecord]) -> RecordSets:
        """These sets and ``records`` (not yet appended), without decoding the stored ones again."""
        copy = object.__new__(RecordSets)
        copy.__dict__.update(self.__dict__)
        copy._extra = dict(self._extra)
        for record in records:
            copy._extra[record.set_id] = self._materialise(record)
        return copy

    def _materialise(self, record: RecordSetRecord) -> np.ndarray:
        if record.ids is not None:
            return _ids(record.ids, "new record set")
        assert record.base is not None
        base = self[record.base]
        return np.setdiff1d(np.union1d(base, _ids(record.added, "new")), _ids(record.removed, "new"))

    def __contains__(self, set_id: object) -> bool:
        return set_id in self._masks or set_id in self._extra

    def __getitem__(self, set_id: str) -> np.ndarray:
        """The sorted ids of a set."""
        if set_id in self._extra:
            return self._extra[set_id]
        return self._universe[self._masks[set_id]]

    def __iter__(self) -> Iterator[str]:
        return iter([*self._masks, *self._extra])

    def universe(self) -> np.ndarray:
        """Every record id any set holds (sorted, unique)."""
        extra = list(self._extra.values())
        return as_set(np.concatenate([self._universe, *extra])) if extra else self._universe

    def membership(self, query: np.ndarray, set_ids: Sequence[str]) -> np.ndarray:
        """A boolean matrix: row i says which of ``query``'s ids (sorted, unique) set ``set_ids[i]`` holds."""
        position = np.minimum(self._index(query), max(len(self._universe) - 1, 0))
        known = self._universe[position] == query if len(self._universe) else np.zeros(len(query), dtype=bool)
        rows = []
        for set_id in set_ids:
            if set_id in self._extra:
                rows.append(np.isin(query, self._extra[set_id], assume_unique=True))
            else:
                rows.append(known & self._masks[set_id][position] if len(self._universe) else known)
        return np.stack(rows) if rows else np.zeros((0, len(query)), dtype=bool)

    def encode(self, ids: np.ndarray) -> RecordSetRecord | None:
        """The record that stores ``ids`` most compactly, or None when this very set is stored already.

        A difference from the stored set it differs least from is used when that is smaller than the whole set.
        """
        ids = as_set(ids)
        set_id = set_digest(ids)
        if set_id in self:
            return None
        fields: dict[str, object] = {"ids": _blob(ids)}
        if self._masks:
            position = np.minimum(self._index(ids), max(len(self._universe) - 1, 0))
            known = self._universe[position] == ids
            wanted = np.zeros(len(self._universe), dtype=bool)
            wanted[position[known]] = True
            outside = int((~known).sum())
            best, best_id = len(ids), None
            for base_id, mask in self._masks.items():
                cost = outside + int((wanted & ~mask).sum()) + int((mask & ~wanted).sum())
                if cost < best:
                    best, best_id = cost, base_id
            if best_id is not None:
                mask = self._masks[best_id]
                added = ids[~known | ~mask[position]]
                removed = self._universe[mask & ~wanted]
                fields = {"base": best_id, "added": _blob(added) or None, "removed": _blob(removed) or None}
        return RecordSetRecord(
            seq=0, prev_hash=GENESIS_HASH, created_at=timestamp(), set_id=set_id, count=len(ids), **fields
        )
