"""Audit reports over privacy ledgers: per dataset, per exposure class, JSON for machines, an epsilon plot.

Every figure is recomputed from the ledger's records, at the ledger's delta with its accountant; the report never
trusts a stored number. A report built without verification says so (``verified: false``).

* **Per dataset** (a record set events were charged to, or a legacy dataset by its v1 fingerprint): events charged
  to it and the epsilon of its MOST EXPOSED record, i.e. composed with every other event that touched any of its
  records. For a legacy dataset not attributed to its records, ``own_epsilon`` is what its own events alone cost
  (the figure legacy ledgers reported); its events are charged to every record.
* **Purpose**: an event that released a noisy label histogram rather than trained (``purpose`` in the ledger,
  :mod:`common.privacy.histogram`) is listed in ``label_histogram_events``; JSON rows carry ``purpose``.
* **Per exposure class**: records sharing the same history (:mod:`common.privacy.exposure`), with their epsilon.
* **Witnesses** (``--witness privacy_report.json``): every head a server witnessed for this ledger must still be in
  it; a ledger rolled back or replaced behind a witness fails (:mod:`common.privacy.witnesses`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.errors import LedgerCorruptError
from common.privacy.exposure import Charge, ExposureClass, charges, epsilon_of, most_exposed, partition
from common.privacy.ledger import PrivacyLedger
from common.privacy.records import LABEL_HISTOGRAM, ReserveRecord
from common.privacy.storage import LedgerSnapshot, read_unverified
from common.privacy.witnesses import Witness

AUDIT_SCHEMA = "fedtune-audit/2"
MAX_PLOT_POINTS = 200


@dataclass(frozen=True)
class EventRow:
    """One reserved act as an auditor sees it."""

    seq: int
    event_id: str
    run_id: str
    round: int
    status: str  # "committed" or "reserved" (reserved-only counts as spent: the act may have happened)
    mechanism: str
    noise_multiplier: float | None
    sample_rate: float | None
    steps: int | None
    max_grad_norm: float | None
    created_at: str


@dataclass(frozen=True)
class DatasetAudit:
    """Spend of one dataset in one ledger: its most exposed record's epsilon (at the ledger's delta)."""

    dataset_id: str
    fingerprint: str
    kind: str  # "records" (a record set) or "legacy" (a v1 dataset fingerprint, charged to every record)
    records: int | None
    delta: float
    accountant: str
    epsilon: float
    own_epsilon: float
    limit: float | None
    remaining: float | None
    events: int
    committed: int
    pending: int
    runs: int
    rounds: int
    non_private: bool
    first_event_at: str
    last_event_at: str
    event_rows: list[EventRow] = field(default_factory=list)
    #: Event ids (of ``event_rows``) that released a noisy label histogram instead of training.
    label_histogram_events: list[str] = field(default_factory=list)
    #: (event number on the dataset, its most exposed record's epsilon after it); only when a plot is requested.
    history: list[tuple[int, float]] = field(default_factory=list)


@dataclass(frozen=True)
class ClassAudit:
    """An exposure class: ``records`` records with the same history of ``events`` events."""

    records: int
    events: int
    epsilon: float
    datasets: list[str]


@dataclass(frozen=True)
class LedgerAudit:
    """Everything ``fedtune audit`` reports about one ledger file."""

    path: str
    ledger_id: str | None
    signed: bool
    verified: bool
    records: int
    per_record: bool
    delta: float | None
    accountant: str | None
    legacy_unattributed: int
    datasets: list[DatasetAudit]
    classes: list[ClassAudit]
    witnessed: list[dict[str, Any]] = field(default_factory=list)

    def with_witnessed(self, witnesses: Sequence[Witness]) -> LedgerAudit:
        """The report with the witnessed heads that were checked against the ledger."""
        rows = [{"site": w.site, "round": w.round, "seq": w.head.seq, "hash": w.head.hash} for w in witnesses]
        return replace(self, witnessed=rows)

    def to_json(self) -> dict[str, Any]:
        """JSON-able form; infinities (non-private spend, no limit) become null, flagged by ``non_private``."""
        payload = asdict(self)
        for dataset in payload["datasets"]:
            for key in ("epsilon", "own_epsilon", "remaining"):
                dataset[key] = _finite_or_none(dataset[key])
            histograms = set(dataset.pop("label_histogram_events"))
            dataset["events_detail"] = [
                {**row, "purpose": LABEL_HISTOGRAM if row["event_id"] in histograms else "train"}
                for row in dataset.pop("event_rows")
            ]
            dataset["history"] = [{"event": n, "epsilon": _finite_or_none(e)} for n, e in dataset["history"]]
        for exposure in payload["classes"]:
            exposure["epsilon"] = _finite_or_none(exposure["epsilon"])
        return payload


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def audit_ledger(
    path: Path, *, verify: bool, trusted_key: Ed25519PublicKey | None = None, with_history: bool = False
) -> LedgerAudit:
    """Read (and, with ``verify``, fully verify) one ledger and summarise every dataset and exposure class."""
    if not path.is_file():
        raise LedgerCorruptError(f"{path}: no such ledger file")
    snapshot = PrivacyLedger(path, trusted_public_key=trusted_key).snapshot() if verify else read_unverified(path)
    header = snapshot.header
    reserves = snapshot.reservations()
    delta, accountant = (reserves[0].delta, reserves[0].accountant) if reserves else (None, None)
    charged = charges(snapshot.records)
    groups: dict[str, list[Charge]] = {}
    for charge in charged:
        groups.setdefault(charge.record_set or charge.event.dataset_fingerprint, []).append(charge)
    datasets = [
        _dataset_audit(snapshot, key, group, charged, with_history)
        for key, group in groups.items()
        if delta is not None and accountant is not None
    ]
    return LedgerAudit(
        path=str(path),
        ledger_id=header.ledger_id if header else None,
        signed=bool(header and header.public_key),
        verified=verify,
        records=len(snapshot.records),
        per_record=snapshot.upgrade is not None,
        delta=delta,
        accountant=accountant,
        legacy_unattributed=sum(c.record_set is None for c in charged),
        datasets=datasets,
        classes=_classes(snapshot, charged, delta, accountant) if delta is not None and accountant else [],
    )


def _dataset_audit(
    snapshot: LedgerSnapshot, key: str, group: list[Charge], charged: list[Charge], with_history: bool
) -> DatasetAudit:
    reservations = [c.event for c in group]
    first, last = reservations[0], reservations[-1]
    ledger_first = snapshot.reservations()[0]
    delta, accountant = ledger_first.delta, ledger_first.accountant
    legacy = group[0].record_set is None
    if legacy:  # records unknown: every record carries every unattributed legacy event
        relevant = [c for c in charged if c.record_set is None]
        classes = [ExposureClass(0, tuple(c.event for c in relevant))]
    else:
        classes = partition(snapshot.sets[key], charged, snapshot.sets)
    epsilon = most_exposed(classes, delta=delta, accountant=accountant)[0]
    own = epsilon_of(reservations, delta=first.delta, accountant=first.accountant)
    limit = last.limit_epsilon
    committed = sum(r.event_id in snapshot.committed for r in reservations)
    return DatasetAudit(
        dataset_id=last.dataset_id,
        fingerprint=key,
        kind="legacy" if legacy else "records",
        records=None if legacy else len(snapshot.sets[key]),
        delta=delta,
        accountant=accountant,
        epsilon=epsilon,
        own_epsilon=own,
        limit=limit,
        remaining=None if limit is None else max(0.0, limit - epsilon),
        events=len(reservations),
        committed=committed,
        pending=len(reservations) - committed,
        runs=len({r.run_id for r in reservations}),
        rounds=len({(r.run_id, r.round) for r in reservations}),
        non_private=any(r.dp_event() is None for c in classes for r in c.events),
        first_event_at=first.created_at,
        last_event_at=last.created_at,
        event_rows=[_row(r, snapshot.committed) for r in reservations],
        label_histogram_events=[r.event_id for r in reservations if r.purpose == LABEL_HISTOGRAM],
        history=_history(classes, delta, accountant) if with_history else [],
    )


def _classes(snapshot: LedgerSnapshot, charged: list[Charge], delta: float, accountant: Any) -> list[ClassAudit]:
    universe = snapshot.sets.universe()
    names = {c.record_set: c.event.dataset_id for c in charged if c.record_set is not None}
    audits = []
    for exposure in partition(universe, charged, snapshot.sets):
        member_sets = {c.record_set for c in charged if c.event in exposure.events and c.record_set is not None}
        audits.append(
            ClassAudit(
                records=exposure.records,
                events=len(exposure.events),
                epsilon=exposure.epsilon(delta=delta, accountant=accountant),
                datasets=sorted({names[s] for s in member_sets}),
            )
        )
    return sorted(audits, key=lambda a: -a.epsilon if math.isfinite(a.epsilon) else -math.inf)


def _row(record: ReserveRecord, committed: frozenset[str]) -> EventRow:
    return EventRow(
        seq=record.seq,
        event_id=record.event_id,
        run_id=record.run_id,
        round=record.round,
        status="committed" if record.event_id in committed else "reserved",
        mechanism=record.mechanism,
        noise_multiplier=record.noise_multiplier,
        sample_rate=record.sample_rate,
        steps=record.steps,
        max_grad_norm=record.max_grad_norm,
        created_at=record.created_at,
    )


def _history(classes: Sequence[ExposureClass], delta: float, accountant: Any) -> list[tuple[int, float]]:
    """The most exposed record's epsilon after each event touching the dataset (sampled to MAX_PLOT_POINTS)."""
    seqs = sorted({r.seq for c in classes for r in c.events})
    stride = max(1, math.ceil(len(seqs) / MAX_PLOT_POINTS))
    points = sorted({*range(stride, len(seqs) + 1, stride), len(seqs)} - {0})
    history = []
    for k in points:
        upto = seqs[k - 1]
        prefix = [ExposureClass(c.records, tuple(r for r in c.events if r.seq <= upto)) for c in classes]
        history.append((k, most_exposed(prefix, delta=delta, accountant=accountant)[0]))
    return history


def plot_history(audits: Sequence[LedgerAudit], out: Path) -> Path:
    """Write a PNG of epsilon over events for every dataset, with each limit as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(8, 4.5))
    for audit in audits:
        for dataset in audit.datasets:
            xs = [0] + [k for k, _ in dataset.history]
            ys = [0.0] + [e if math.isfinite(e) else float("nan") for _, e in dataset.history]
            label = f"{dataset.dataset_id} ({dataset.fingerprint[:8]})"
            (line,) = axes.plot(np.asarray(xs), np.asarray(ys), marker="o", markersize=3, label=label)
            if dataset.limit is not None:
                axes.axhline(dataset.limit, color=line.get_color(), linestyle="--", linewidth=1)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("privacy events touching the dataset's records")
    axes.set_ylabel("epsilon of its most exposed record")
    axes.set_title("Privacy spend per dataset (dashed: limit)")
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png", dpi=120)
    plt.close(figure)
    return out
