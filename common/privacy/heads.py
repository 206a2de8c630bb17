"""Where a ledger ends, and whether it still holds a head a witness saw (a server, in an earlier round).

A witness that saw ``(ledger id, seq, hash)`` can later be shown that the ledger only grew since: the body digests of
the records after it link that hash to the current head (:func:`common.privacy.chain.verify_witnessed`). A ledger
that no longer holds the witnessed record was rolled back, cut or replaced, and nothing is trained on it.
"""

from __future__ import annotations

from common.errors import LedgerTamperError
from common.privacy.chain import LedgerHead, body_digest
from common.privacy.storage import LedgerSnapshot


def ledger_head(snapshot: LedgerSnapshot) -> LedgerHead | None:
    """The ledger's id and last record (None for a ledger that does not exist yet)."""
    header = snapshot.header
    if header is None:
        return None
    return LedgerHead(ledger_id=header.ledger_id, seq=snapshot.records[-1].seq, hash=snapshot.records[-1].hash)


def check_contains(snapshot: LedgerSnapshot, since: LedgerHead) -> None:
    """Raise LedgerTamperError unless the ledger still holds the head ``since`` a witness saw."""
    header = snapshot.header
    if header is None or since.ledger_id != header.ledger_id:
        raise LedgerTamperError(f"{snapshot.path}: a witness saw another ledger ({since.ledger_id}) than this one")
    if since.seq >= len(snapshot.records) or snapshot.records[since.seq].hash != since.hash:
        raise LedgerTamperError(
            f"{snapshot.path}: a witness saw this ledger at seq {since.seq} (hash {since.hash[:12]}), which it no "
            "longer contains: it was rolled back, cut or replaced. Nothing is trained on a rolled-back ledger."
        )


def extension_proof(snapshot: LedgerSnapshot, since: LedgerHead) -> list[str]:
    """The body digests of the records after ``since``, proving the current head extends it.

    Raises LedgerTamperError if the ledger does not hold the witnessed head, or if records after it predate the
    upgrade (a witness only ever sees upgraded ledgers, whose records are linked by digest).
    """
    check_contains(snapshot, since)
    after = snapshot.records[since.seq + 1 :]
    upgrade = snapshot.upgrade
    if after and (upgrade is None or upgrade.seq > after[0].seq):
        raise LedgerTamperError(f"{snapshot.path}: a witnessed head precedes the ledger's upgrade")
    return [body_digest(record) for record in after]
