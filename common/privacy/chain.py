"""How ledger records are hashed into a chain, and how a later head is proved to extend an earlier one.

Two rules, one per schema generation (Haber & Stornetta, J. Cryptology 1991, "How to time-stamp a digital document"):

* **v1** (ledgers written before the upgrade record existed): ``hash = sha256(canonical JSON of the record without
  hash and signature)``, ``prev_hash`` inside the JSON. Old ledgers keep verifying exactly as they always did.
* **v2** (the ``upgrade`` record and every record after it): ``hash = sha256(DOMAIN || prev_hash || body)`` where
  ``body = sha256(canonical JSON without hash, signature and prev_hash)``. The link is explicit, so that a site can
  prove to a witness (a server that saw its head earlier) that its current head EXTENDS the witnessed one by
  sending only the body digests of the records in between: the witness recomputes the links and learns nothing of
  the records' contents (each body holds a random event id, so digests cannot be guessed from candidate contents).

A rolled-back, forked or rewritten ledger cannot produce such a proof for a head it no longer contains.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from common.errors import LedgerTamperError

GENESIS_HASH = "0" * 64
DOMAIN = b"fedtune-ledger/2\x00"
#: Fields a v2 record type added to a v1 type; absent (None) in every v1 record, so v1 hashes leave them out.
V2_FIELDS = frozenset({"record_set"})
_HEX64 = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class LedgerHead:
    """Where a ledger ends: its id, its last record's seq and hash. What a site shows a witness each round."""

    ledger_id: str
    seq: int
    hash: str


class Chained(Protocol):
    """A record in the chain: it names its predecessor's hash."""

    prev_hash: str

    def model_dump(self, **kwargs: Any) -> dict[str, Any]: ...  # noqa: D102 - pydantic's


def canonical_json(payload: dict[str, Any]) -> str:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 kept (the bytes that are hashed and stored)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def payload(record: BaseModel, *, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The record as stored, without the fields in ``exclude`` and without v2-only fields that are unset."""
    dumped = record.model_dump(mode="json", exclude=set(exclude))
    return {k: v for k, v in dumped.items() if not (k in V2_FIELDS and v is None)}


def v1_hash(record: BaseModel) -> str:
    """The v1 hash: sha256 of the canonical JSON without ``hash`` and ``signature``."""
    return hashlib.sha256(
        canonical_json(payload(record, exclude=frozenset({"hash", "signature"}))).encode()
    ).hexdigest()


def body_digest(record: BaseModel) -> str:
    """The v2 body digest: sha256 of the canonical JSON without ``hash``, ``signature`` and ``prev_hash``."""
    body = payload(record, exclude=frozenset({"hash", "signature", "prev_hash"}))
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def link(prev_hash: str, body: str) -> str:
    """The v2 hash of a record whose body digest is ``body`` and whose predecessor's hash is ``prev_hash``."""
    return hashlib.sha256(DOMAIN + bytes.fromhex(prev_hash) + bytes.fromhex(body)).hexdigest()


def v2_hash(record: BaseModel) -> str:
    """The v2 hash of a record (its ``prev_hash`` field is the link)."""
    chained: Chained = record  # type: ignore[assignment]  # every ledger record model has prev_hash
    return link(chained.prev_hash, body_digest(record))


def is_digest(text: object) -> bool:
    """Whether ``text`` is a lowercase hex sha256 digest (what heads and proofs carry)."""
    return isinstance(text, str) and len(text) == 64 and set(text) <= _HEX64


def verify_extension(since_hash: str, head_hash: str, proof: Sequence[str]) -> None:
    """Raise LedgerTamperError unless linking ``proof``'s body digests onto ``since_hash`` arrives at ``head_hash``.

    ``proof`` holds the body digests of the records after the witnessed one, in order (empty when nothing was
    appended). Only a ledger that still contains the witnessed record, followed by exactly these records, can give a
    proof that arrives at its current head.
    """
    if not is_digest(since_hash) or not is_digest(head_hash) or not all(is_digest(d) for d in proof):
        raise LedgerTamperError("a ledger head or proof is not made of sha256 digests")
    current = since_hash
    for digest in proof:
        current = link(current, digest)
    if current != head_hash:
        raise LedgerTamperError(
            f"the ledger head {head_hash[:12]} does not extend the witnessed head {since_hash[:12]} "
            f"by the {len(proof)} record(s) proved: the ledger was rolled back, forked or rewritten"
        )


def verify_witnessed(since: LedgerHead, head: LedgerHead, proof: Sequence[str]) -> None:
    """Raise LedgerTamperError unless ``head`` is ``since``'s ledger, grown by exactly the records ``proof`` proves."""
    if head.ledger_id != since.ledger_id:
        raise LedgerTamperError(f"the ledger {head.ledger_id} is not the witnessed ledger {since.ledger_id}")
    if head.seq != since.seq + len(proof):
        raise LedgerTamperError(
            f"the ledger head seq {head.seq} is not the witnessed seq {since.seq} plus {len(proof)} proved record(s)"
        )
    verify_extension(since.hash, head.hash, proof)
