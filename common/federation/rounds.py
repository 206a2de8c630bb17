"""What happened in a federated run, as typed records shared by every reader.

The server's round loop writes one :class:`RoundRecord` per round; checkpoints, ``metrics.json``, the privacy report,
the progress display and ``fedtune server start`` read the same records, never string keys into dicts. A
:class:`Status` is also what a site puts in its reply (``trained``, ``refused``, ``skipped``), so the protocol and the
server's bookkeeping cannot disagree on spelling.

JSON form (``to_json``/``from_json``) is the one stored in checkpoints and ``metrics.json``; readers accept records
written by earlier versions (a missing optional key takes its default).

A site is named by its AUTHENTICATED identity (:mod:`server.identities`): the name the operator gave its enrolled
key (or its simulated node), never a name the site reports about itself; ``node <id>`` where no identity is known.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from common.errors import FederationError
from common.privacy.chain import LedgerHead

#: Metrics by name (accuracy, loss, ...): ``None`` where a metric is undefined (e.g. ROC-AUC with one class).
Metrics = Mapping[str, float | None]


class Status(StrEnum):
    """What became of one site in one round."""

    TRAINED = "trained"  # the site trained and its update was accepted (in a reply: an update is attached)
    REFUSED = "refused"  # the site's budget cannot pay for the round; it is never sampled again in this run
    SKIPPED = "skipped"  # evaluation: the site does not release metrics
    REJECTED = "rejected"  # the server refused the reply (validation failed); it is left out of the round
    CRASHED = "crashed"  # an error reply, or no reply before the round timeout


def head_to_json(head: LedgerHead) -> dict[str, Any]:
    """A ledger head as JSON (the keys of ``privacy_report.json``'s witnesses)."""
    return {"ledger_id": head.ledger_id, "seq": head.seq, "hash": head.hash}


def head_from_json(data: Mapping[str, Any]) -> LedgerHead:
    """Inverse of :func:`head_to_json`."""
    return LedgerHead(ledger_id=str(data["ledger_id"]), seq=int(data["seq"]), hash=str(data["hash"]))


@dataclass(frozen=True)
class SiteResult:
    """One site in one round, as the server saw it.

    ``site_name`` is the site's authenticated identity and ``key_fingerprint`` the enrolled key behind it (None
    without one: simulation, plaintext runs); ``ledger_head`` is the ledger head the server witnessed in this reply
    (verified to extend the one it witnessed before), None if the reply carried none it accepted.
    """

    node_id: int
    site_name: str
    status: Status
    reason: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    update_norm: float | None = None
    upload_bytes: int = 0
    key_fingerprint: str | None = None
    ledger_head: LedgerHead | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "node_id": self.node_id,
            "site_name": self.site_name,
            "status": self.status.value,
            "reason": self.reason,
            "metrics": dict(self.metrics),
            "update_norm": self.update_norm,
            "upload_bytes": self.upload_bytes,
            "key_fingerprint": self.key_fingerprint,
            "ledger_head": head_to_json(self.ledger_head) if self.ledger_head is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SiteResult:
        """Inverse of :meth:`to_json`."""
        return cls(
            node_id=int(data["node_id"]),
            site_name=str(data["site_name"]),
            status=Status(data["status"]),
            reason=str(data.get("reason") or ""),
            metrics={str(k): float(v) for k, v in (data.get("metrics") or {}).items() if v is not None},
            update_norm=data.get("update_norm"),
            upload_bytes=int(data.get("upload_bytes") or 0),
            key_fingerprint=data.get("key_fingerprint"),
            ledger_head=head_from_json(data["ledger_head"]) if data.get("ledger_head") else None,
        )


@dataclass(frozen=True)
class RoundRecord:
    """One round: who was sampled, what each site did, and the global adapter's metrics afterwards.

    Round 0 records the initial adapter's server-side metrics only. ``aggregated`` is False for a round that ended
    the run without producing a new adapter (too few sites left with budget). ``upload_precision`` is the dtype the
    round's uploads travelled in (float32 when the global adapter did not fit float16).
    """

    round: int
    sampled: tuple[int, ...] = ()
    sites: tuple[SiteResult, ...] = ()
    train: Mapping[str, float] | None = None
    server_eval: Metrics | None = None
    federated_eval: Metrics | None = None
    seconds: float | None = None
    aggregated: bool = True
    upload_precision: str | None = None

    def with_status(self, status: Status) -> list[SiteResult]:
        """The sites of one status, in reply order."""
        return [site for site in self.sites if site.status is status]

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (the layout of ``metrics.json``'s ``rounds``)."""
        return {
            "round": self.round,
            "sampled": list(self.sampled),
            "sites": [site.to_json() for site in self.sites],
            "train": dict(self.train) if self.train is not None else None,
            "server_eval": dict(self.server_eval) if self.server_eval is not None else None,
            "federated_eval": dict(self.federated_eval) if self.federated_eval is not None else None,
            "seconds": self.seconds,
            "aggregated": self.aggregated,
            "upload_precision": self.upload_precision,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundRecord:
        """Inverse of :meth:`to_json`."""
        return cls(
            round=int(data["round"]),
            sampled=tuple(int(n) for n in data.get("sampled") or ()),
            sites=tuple(SiteResult.from_json(site) for site in data.get("sites") or ()),
            train=data.get("train"),
            server_eval=data.get("server_eval"),
            federated_eval=data.get("federated_eval"),
            seconds=data.get("seconds"),
            aggregated=bool(data.get("aggregated", True)),
            upload_precision=data.get("upload_precision"),
        )


@dataclass(frozen=True)
class Crash:
    """A site that crashed (or never answered) in a round."""

    round: int
    site: SiteResult


@dataclass(frozen=True)
class Selection:
    """The round whose global adapter is the run's result (``adapter/``), and why.

    ``metric`` and ``value``: the server-side metric it was the best by (``select-metric``), None when it was not
    selected by one (no server-side held-out data: the last round's adapter). ``reason`` says so in words.
    """

    round: int
    metric: str | None = None
    value: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class FederationResult:
    """How a run ended, which round's adapter it kept (``selected``), and where its outputs are."""

    run_id: str
    out_dir: Path
    completed_rounds: int
    planned_rounds: int
    stop_reason: str | None
    history: tuple[RoundRecord, ...] = ()
    selected: Selection | None = None

    @property
    def crashes(self) -> list[Crash]:
        """Every crash of the run, in round order."""
        return [Crash(record.round, site) for record in self.history for site in record.with_status(Status.CRASHED)]

    @property
    def ok(self) -> bool:
        """True when no site crashed (an early end for lack of budget is not a failure)."""
        return not self.crashes

    def raise_for_crashes(self) -> None:
        """Raise FederationError naming every crashed site, its round and its reason.

        (Flower alone reports a run whose ClientApps crashed as completed.)
        """
        if self.crashes:
            names = ", ".join(sorted({f"{c.site.site_name} (round {c.round}): {c.site.reason}" for c in self.crashes}))
            raise FederationError(f"{len(self.crashes)} site crash(es) during the run ({names}); see {self.out_dir}")

    @classmethod
    def from_metrics(cls, document: Mapping[str, Any], out_dir: Path) -> FederationResult:
        """The result recorded in a run's ``metrics.json`` (see :func:`server.report.metrics_document`)."""
        selected = document.get("selected_round")
        return cls(
            run_id=str(document["run_id"]),
            out_dir=out_dir,
            completed_rounds=int(document["completed_rounds"]),
            planned_rounds=int(document["planned_rounds"]),
            stop_reason=document.get("stop_reason"),
            history=tuple(RoundRecord.from_json(record) for record in document.get("rounds", [])),
            selected=Selection(
                round=int(selected),
                metric=document.get("select_metric"),
                value=document.get("selected_value"),
                reason=str(document.get("selection_reason") or ""),
            )
            if selected is not None
            else None,
        )
