"""Witnessed ledger heads: the server remembers where each site's ledger ended and checks that it only grows.

Every train reply carries the site's ledger head after the round (ledger id, seq, hash) and a proof that it extends
the head the server sent in its request (the body digests of the records in between, :mod:`common.privacy.chain`).
The server keeps, per AUTHENTICATED identity (:mod:`server.identities`), the last head it accepted, and accepts a
new head only if :func:`~common.privacy.chain.verify_witnessed` links the proof onto it. A site whose ledger was
rolled back (an older copy restored), forked or rewritten cannot produce such a proof: its update is rejected and
the site excluded for the rest of the run. The heads accepted go into the checkpoint (so a resumed server keeps
witnessing) and into ``privacy_report.json`` (``fedtune audit LEDGER --verify --witness`` checks a ledger still
contains them).

**Trust on first use**: the first head the server sees from a site is accepted as it is, as long as it is well
formed (the server has nothing earlier to compare it with; the site's own ledger verification covers what came
before). From then on, every head must extend the witnessed one, and a trained round must have grown the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.errors import LedgerTamperError, UpdateRejectedError
from common.federation import protocol as p
from common.privacy.chain import LedgerHead, is_digest, verify_witnessed

#: Longest ledger id a site may send (a uuid or a digest is far shorter).
MAX_LEDGER_ID = 128


@dataclass(frozen=True)
class LedgerClaim:
    """What a reply says about the site's ledger: its head, and the proof it extends the witnessed head."""

    head: LedgerHead
    proof: tuple[str, ...]


def read_ledger_claim(record: Any, *, source: str) -> LedgerClaim:
    """The ``ledger`` record of a reply, every value type- and range-checked; UpdateRejectedError otherwise."""
    if not isinstance(record, Mapping):
        raise UpdateRejectedError(f"{source}: the reply carries no {p.LEDGER!r} record (its ledger head)")
    unknown = sorted(set(record) - p.LEDGER_KEYS)
    missing = sorted(p.LEDGER_KEYS - set(record))
    if unknown or missing:
        raise UpdateRejectedError(f"{source}: ledger record keys: unexpected {unknown}, missing {missing}")
    ledger_id, seq, head, proof = (record[key] for key in (p.LEDGER_ID, p.LEDGER_SEQ, p.LEDGER_HEAD, p.LEDGER_PROOF))
    if not isinstance(ledger_id, str) or not 0 < len(ledger_id) <= MAX_LEDGER_ID or not ledger_id.isprintable():
        raise UpdateRejectedError(f"{source}: {p.LEDGER_ID!r} must be a printable string of 1-{MAX_LEDGER_ID} chars")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise UpdateRejectedError(f"{source}: {p.LEDGER_SEQ!r} must be an integer >= 0")
    if not is_digest(head):
        raise UpdateRejectedError(f"{source}: {p.LEDGER_HEAD!r} must be a sha256 hex digest")
    if not isinstance(proof, list) or not all(is_digest(digest) for digest in proof):
        raise UpdateRejectedError(f"{source}: {p.LEDGER_PROOF!r} must be a list of sha256 hex digests")
    return LedgerClaim(LedgerHead(ledger_id=ledger_id, seq=seq, hash=head), tuple(proof))


def check_extends(witnessed: LedgerHead | None, claim: LedgerClaim, *, trained: bool) -> None:
    """Raise LedgerTamperError unless ``claim`` may follow ``witnessed`` (any well-formed head on first contact).

    A trained round is reserved and committed in the ledger before the reply, so its head must be further on than
    the witnessed one: an unchanged head means the spend was not recorded.
    """
    if witnessed is None:
        return
    verify_witnessed(witnessed, claim.head, claim.proof)
    if trained and claim.head.seq <= witnessed.seq:
        raise LedgerTamperError(
            f"the ledger did not grow past the witnessed seq {witnessed.seq}: a trained round must be recorded"
        )


def witness_request(head: LedgerHead) -> dict[str, str | int]:
    """The train-request keys that show a site the head the server witnessed last."""
    return {p.WITNESSED_LEDGER_ID: head.ledger_id, p.WITNESSED_SEQ: head.seq, p.WITNESSED_HASH: head.hash}
