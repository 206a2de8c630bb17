"""Cross-check a ledger against the heads a server witnessed (``fedtune audit --verify --witness REPORT``).

Every train reply carries the site's ledger head (ledger id, seq, hash); the server records each head it accepted in
its run's ``privacy_report.json`` (``witnesses``), having checked that it extends the one it saw before. An insider
at the site can restore an older ledger with its anchor, or recompute an unsigned chain after deleting events: the
file then verifies on its own, but no longer contains the heads the server witnessed. This check finds that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import LedgerError, LedgerTamperError
from common.privacy.chain import LedgerHead, is_digest
from common.privacy.storage import LedgerSnapshot


@dataclass(frozen=True)
class Witness:
    """One head a server witnessed: which site (its authenticated identity), in which round."""

    site: str
    round: int
    head: LedgerHead


def read_witnesses(report: Path) -> list[Witness]:
    """The witnessed heads of a run's privacy report; LedgerError naming the file if it holds none or is malformed."""
    try:
        payload: Any = json.loads(report.read_text(encoding="utf-8"))
        entries = payload["witnesses"]
        witnesses = [
            Witness(
                site=str(entry["site"]),
                round=int(entry["round"]),
                head=LedgerHead(ledger_id=str(entry["ledger_id"]), seq=int(entry["seq"]), hash=str(entry["hash"])),
            )
            for entry in entries
        ]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise LedgerError(f"{report}: not a privacy report with witnessed ledger heads ({exc})") from None
    bad = next((w for w in witnesses if not is_digest(w.head.hash) or w.head.seq < 0), None)
    if bad is not None:
        raise LedgerError(f"{report}: a witnessed head of {bad.site} in round {bad.round} is malformed")
    return witnesses


def check_witnessed(snapshot: LedgerSnapshot, witnesses: list[Witness], *, report: Path) -> list[Witness]:
    """The witnesses of this ledger, each checked to be contained in it; LedgerTamperError at the first that is not.

    A report that witnessed no head of this ledger (another ledger id) is an error too: the ledger was replaced, or
    the report is another run's.
    """
    header = snapshot.header
    ledger_id = header.ledger_id if header is not None else None
    mine = [w for w in witnesses if w.head.ledger_id == ledger_id]
    if not mine:
        seen = sorted({w.head.ledger_id for w in witnesses})
        raise LedgerTamperError(
            f"{snapshot.path}: {report} witnessed no head of this ledger (id {ledger_id}); it witnessed {seen}: "
            "the ledger was replaced, or the report belongs to another site's run"
        )
    for witness in mine:
        head = witness.head
        if head.seq >= len(snapshot.records) or snapshot.records[head.seq].hash != head.hash:
            raise LedgerTamperError(
                f"{snapshot.path}: the server witnessed seq {head.seq} (hash {head.hash[:12]}) of {witness.site} in "
                f"round {witness.round}, which this ledger no longer contains: it was rolled back or rewritten"
            )
    return mine
