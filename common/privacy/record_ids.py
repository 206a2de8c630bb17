"""Which record is which: a keyed hash of a record's normalised text, so that budgets follow records, not files.

A site's privacy budget protects the people behind its RECORDS. If budgets were kept per file, relabelling,
re-encoding, reordering, duplicating, subsetting or growing a dataset would each look like a fresh dataset with a
fresh budget. So every record is identified by

    id = HMAC-SHA256(record key, normalise(text))[:16]

* ``normalise``: Unicode NFKC, then every run of whitespace collapsed to one space and the ends stripped, so that
  the same text saved by another tool (composed/decomposed accents, full-width forms, CRLF, a trailing space) is the
  same record. The label is not part of it: relabelling cannot create new records.
* **keyed** (RFC 2104 HMAC) with a 256-bit key that is created at the site, stored beside its ledger
  (``<ledger>.record-key``, mode 0600) and never leaves it. Without the key, an id reveals nothing about a text:
  whoever reads the ledger (an auditor, a thief) cannot test whether a given sentence is in the data. The ledger
  commits to the key's id, so a swapped or lost key is detected, never silently a fresh budget.
* 128 bits: a collision between two of a billion records has probability below 1e-20.

Ids are handled as numpy arrays of ``S16`` (sorted, unique), which set operations and the exposure partition use.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from common.data.dedupe import normalise
from common.errors import LedgerError, LedgerTamperError

ID_BYTES = 16
KEY_BYTES = 32
ID_DTYPE = np.dtype(f"S{ID_BYTES}")
_KEY_ID_DOMAIN = b"fedtune record key id\x00"


def key_path(ledger_path: Path) -> Path:
    """Where the record key of the ledger at ``ledger_path`` lives."""
    return ledger_path.with_name(ledger_path.name + ".record-key")


class RecordKey:
    """A site's secret record key (never printed, never sent; its id may be)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise LedgerError(f"a record key is {KEY_BYTES} bytes; got {len(secret)}")
        self._secret = secret

    def __repr__(self) -> str:
        return f"RecordKey(id={self.key_id[:12]}...)"

    @property
    def key_id(self) -> str:
        """A public commitment to the key (sha256 under a domain tag), recorded in the ledger."""
        return hashlib.sha256(_KEY_ID_DOMAIN + self._secret).hexdigest()

    def ids(self, texts: Iterable[str]) -> np.ndarray:
        """The ids of ``texts``, in order (one per text; equal texts after normalising give equal ids)."""
        digests = [
            hmac.new(self._secret, normalise(text).encode("utf-8"), hashlib.sha256).digest()[:ID_BYTES]
            for text in texts
        ]
        return np.array(digests, dtype=ID_DTYPE)

    @classmethod
    def load(cls, path: Path) -> RecordKey:
        """The key at ``path``; LedgerError naming the file if it cannot be read or is malformed."""
        try:
            secret = path.read_bytes()
        except OSError as exc:
            raise LedgerError(f"{path}: cannot read the ledger's record key: {exc.strerror}") from None
        if len(secret) != KEY_BYTES:
            raise LedgerTamperError(f"{path}: not a record key ({len(secret)} bytes, expected {KEY_BYTES})")
        return cls(secret)

    @classmethod
    def create(cls, path: Path) -> RecordKey:
        """A new random key written to ``path`` (mode 0600 from creation, never overwriting, durable)."""
        secret = secrets.token_bytes(KEY_BYTES)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise LedgerError(f"{path}: a record key already exists; refusing to overwrite it") from None
        except OSError as exc:
            raise LedgerError(f"{path}: cannot create the ledger's record key: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(secret)
            handle.flush()
            os.fsync(handle.fileno())
        return cls(secret)


def as_set(ids: np.ndarray) -> np.ndarray:
    """Sorted unique ids (the canonical form of a record set)."""
    return np.unique(np.asarray(ids, dtype=ID_DTYPE))


def set_digest(ids: np.ndarray) -> str:
    """The content address of a record set: sha256 of its sorted ids' bytes."""
    return hashlib.sha256(as_set(ids).tobytes()).hexdigest()


def from_bytes(blob: bytes) -> np.ndarray:
    """Ids from their concatenated bytes (the storage form)."""
    if len(blob) % ID_BYTES:
        raise LedgerTamperError(f"a record-id blob of {len(blob)} bytes is not a multiple of {ID_BYTES}")
    return np.frombuffer(blob, dtype=ID_DTYPE).copy()
