"""Audit reports over privacy ledgers: per-dataset spend, JSON for machines, and an epsilon-over-rounds plot.

Every figure is recomputed from the ledger's records by the accountant the dataset is accounted with; the report
never trusts a stored number. A report built without verification says so (``verified: false``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.errors import LedgerCorruptError
from common.privacy.ledger import PrivacyLedger, epsilon_of
from common.privacy.records import ReserveRecord
from common.privacy.storage import LedgerSnapshot, read_unverified

AUDIT_SCHEMA = "fedtune-audit/1"
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
    """Spend of one dataset in one ledger (epsilon at ``delta`` with ``accountant``)."""

    dataset_id: str
    fingerprint: str
    delta: float
    accountant: str
    epsilon: float
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
    #: (event number, epsilon after it), filled only when a plot is requested.
    history: list[tuple[int, float]] = field(default_factory=list)


@dataclass(frozen=True)
class LedgerAudit:
    """Everything ``fedtune audit`` reports about one ledger file."""

    path: str
    ledger_id: str | None
    signed: bool
    verified: bool
    records: int
    datasets: list[DatasetAudit]

    def to_json(self) -> dict[str, Any]:
        """JSON-able form; infinities (non-private spend, no limit) become null with a flag."""
        payload = asdict(self)
        for dataset in payload["datasets"]:
            dataset["epsilon"] = _finite_or_none(dataset["epsilon"])
            dataset["remaining"] = _finite_or_none(dataset["remaining"])
            dataset["events_detail"] = dataset.pop("event_rows")
            dataset["history"] = [{"event": n, "epsilon": _finite_or_none(e)} for n, e in dataset["history"]]
        return payload


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def audit_ledger(
    path: Path, *, verify: bool, trusted_key: Ed25519PublicKey | None = None, with_history: bool = False
) -> LedgerAudit:
    """Read (and, with ``verify``, fully verify) one ledger and summarise every dataset in it."""
    if not path.is_file():
        raise LedgerCorruptError(f"{path}: no such ledger file")
    snapshot = PrivacyLedger(path, trusted_public_key=trusted_key).snapshot() if verify else read_unverified(path)
    header = snapshot.header
    return LedgerAudit(
        path=str(path),
        ledger_id=header.ledger_id if header else None,
        signed=bool(header and header.public_key),
        verified=verify,
        records=len(snapshot.records),
        datasets=[_dataset_audit(snapshot, fp, with_history) for fp in snapshot.fingerprints()],
    )


def _dataset_audit(snapshot: LedgerSnapshot, fingerprint: str, with_history: bool) -> DatasetAudit:
    reservations = snapshot.reservations(fingerprint)
    first, last = reservations[0], reservations[-1]
    # A dataset is accounted at its first event's delta and accountant (the ledger enforces this on writes).
    delta, accountant = first.delta, first.accountant
    epsilon = epsilon_of(reservations, delta=delta, accountant=accountant)
    limit = last.limit_epsilon
    committed = sum(r.event_id in snapshot.committed for r in reservations)
    return DatasetAudit(
        dataset_id=last.dataset_id,
        fingerprint=fingerprint,
        delta=delta,
        accountant=accountant,
        epsilon=epsilon,
        limit=limit,
        remaining=None if limit is None else max(0.0, limit - epsilon),
        events=len(reservations),
        committed=committed,
        pending=len(reservations) - committed,
        runs=len({r.run_id for r in reservations}),
        rounds=len({(r.run_id, r.round) for r in reservations}),
        non_private=any(r.dp_event() is None for r in reservations),
        first_event_at=first.created_at,
        last_event_at=last.created_at,
        event_rows=[_row(r, snapshot.committed) for r in reservations],
        history=_history(reservations, delta, accountant) if with_history else [],
    )


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


def _history(reservations: Sequence[ReserveRecord], delta: float, accountant: str) -> list[tuple[int, float]]:
    """Epsilon after each event (sampled down to MAX_PLOT_POINTS points, always keeping the last)."""
    n = len(reservations)
    stride = max(1, math.ceil(n / MAX_PLOT_POINTS))
    points = sorted({*range(stride, n + 1, stride), n})
    return [
        (k, epsilon_of(reservations[:k], delta=delta, accountant=accountant))  # type: ignore[arg-type]
        for k in points
    ]


def plot_history(audits: Sequence[LedgerAudit], out: Path) -> Path:
    """Write a PNG of epsilon over events (rounds) for every dataset, with each limit as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    for audit in audits:
        for dataset in audit.datasets:
            label = f"{dataset.dataset_id} ({dataset.fingerprint[:8]})"
            xs = [0] + [k for k, _ in dataset.history]
            ys = [0.0] + [e if math.isfinite(e) else float("nan") for _, e in dataset.history]
            (line,) = axes.plot(xs, ys, marker="o", markersize=3, label=label)
            if dataset.limit is not None:
                axes.axhline(dataset.limit, color=line.get_color(), linestyle="--", linewidth=1)
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("privacy events (rounds) on the dataset")
    axes.set_ylabel("epsilon spent (recomputed)")
    axes.set_title("Privacy spend per dataset (dashed: limit)")
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png", dpi=120)
    plt.close(figure)
    return out
