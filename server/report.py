"""The run directory's reports: per-round metrics, the server-side privacy report, and a progress plot.

The privacy report records what every site REPORTED it spent, round by round, under the site's AUTHENTICATED
identity (:mod:`server.identities`: the name the operator gave its enrolled key, with the key's fingerprint; never a
name the site reported). It is the server's view, useful for the federation's audit trail; the authority on a
site's spend is the site's own ledger. ``witnesses`` lists every ledger head the server accepted (one object per head:
``site``, ``round``, ``ledger_id``, ``seq``, ``hash``), which ``fedtune audit LEDGER --verify --witness REPORT``
(:mod:`common.privacy.witnesses`) checks the site's ledger still contains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.federation import protocol as p
from common.federation.config import FederationConfig
from common.federation.rounds import FederationResult, RoundRecord, Selection, head_to_json
from common.fileio import atomic_write_json
from server.identities import Identities

METRICS_FILE = "metrics.json"
PRIVACY_REPORT_FILE = "privacy_report.json"
PLOT_FILE = "progress.png"


def metrics_document(config: FederationConfig, result: FederationResult) -> dict[str, Any]:
    """``metrics.json``: the run's settings, how it ended, the round whose adapter it kept, every crash and round."""
    selected = result.selected
    return {
        "run_id": result.run_id,
        "config": config.to_run_config(),
        "planned_rounds": result.planned_rounds,
        "completed_rounds": result.completed_rounds,
        "stop_reason": result.stop_reason,
        "selected_round": selected.round if selected is not None else None,
        "select_metric": selected.metric if selected is not None else None,
        "selected_value": selected.value if selected is not None else None,
        "selection_reason": selected.reason if selected is not None else None,
        "crashes": [{"round": crash.round, **crash.site.to_json()} for crash in result.crashes],
        "rounds": [record.to_json() for record in result.history],
    }


def witnesses(result: FederationResult) -> list[dict[str, Any]]:
    """Every ledger head the server accepted, in round order, in the audit's format."""
    return [
        {"site": site.site_name, "round": record.round, **head_to_json(site.ledger_head)}
        for record in result.history
        for site in record.sites
        if site.ledger_head is not None
    ]


def privacy_report(
    config: FederationConfig, result: FederationResult, identities: Identities | None = None
) -> dict[str, Any]:
    """Every site's reported spend per round (and refusals), each site's last reported total, the witnessed heads.

    ``identities`` (the run's identity table) adds how each named site was authenticated.
    """
    sites: dict[str, list[dict[str, Any]]] = {}
    for record in result.history:
        for site in record.sites:
            metrics = site.metrics
            sites.setdefault(site.site_name, []).append(
                {
                    "round": record.round,
                    "node_id": site.node_id,
                    "key_fingerprint": site.key_fingerprint,
                    "status": site.status.value,
                    "reason": site.reason or None,
                    "epsilon_spent": metrics.get(p.EPSILON_SPENT),
                    "epsilon_round": metrics.get(p.EPSILON_ROUND),
                    "delta": metrics.get(p.DELTA),
                    "noise_multiplier": metrics.get(p.NOISE_MULTIPLIER),
                    "sample_rate": metrics.get(p.SAMPLE_RATE),
                    "steps": metrics.get(p.STEPS),
                }
            )
    final = {
        name: next((e["epsilon_spent"] for e in reversed(rows) if e["epsilon_spent"] is not None), None)
        for name, rows in sites.items()
    }
    return {
        "run_id": result.run_id,
        "target_epsilon_per_site": config.target_epsilon,
        "note": (
            "spend as reported by each site (a site's own ledger is authoritative), under each site's authenticated "
            "identity; witnesses: the ledger heads the server accepted"
        ),
        "sites": sites,
        "final_epsilon_spent": final,
        "identities": {entry.name: entry.to_json() for entry in (identities.entries() if identities else [])},
        "witnesses": witnesses(result),
    }


def write_outputs(
    out_dir: Path, config: FederationConfig, result: FederationResult, *, identities: Identities | None = None
) -> None:
    """metrics.json, privacy_report.json and progress.png."""
    atomic_write_json(out_dir / METRICS_FILE, metrics_document(config, result))
    report = privacy_report(config, result, identities)
    atomic_write_json(out_dir / PRIVACY_REPORT_FILE, report)
    plot_progress(out_dir / PLOT_FILE, result.history, report, config, kept=result.selected)


def _series(history: tuple[RoundRecord, ...], federated: bool, metric: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for record in history:
        metrics = record.federated_eval if federated else record.server_eval
        value = metrics.get(metric) if metrics else None
        if value is not None:
            xs.append(record.round)
            ys.append(value)
    return xs, ys


def _plotted_metric(history: tuple[RoundRecord, ...]) -> str:
    """Accuracy when the run measured it (classification), else the held-out loss (generation)."""
    measured = any((r.server_eval or {}).get("accuracy") is not None for r in history) or any(
        (r.federated_eval or {}).get("accuracy") is not None for r in history
    )
    return "accuracy" if measured else "loss"


def plot_progress(
    path: Path,
    history: tuple[RoundRecord, ...],
    report: dict[str, Any],
    config: FederationConfig,
    *,
    kept: Selection | None = None,
) -> None:
    """Accuracy over rounds (server and federated evaluation; the kept round marked) beside each site's epsilon.

    A run that measured no accuracy (generation) plots its held-out loss instead.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    metric = _plotted_metric(history)
    for federated, label in ((False, "server held-out"), (True, "sites' held-out (not DP)")):
        xs, ys = _series(history, federated, metric)
        if xs:
            left.plot(xs, ys, marker="o", label=label)
    if kept is not None and kept.metric is not None:
        left.axvline(kept.round, color="green", linestyle=":", linewidth=1, label=f"kept (best {kept.metric})")
    left.set_title(f"{metric.capitalize()} of the global adapter")
    left.set_xlabel("round")
    left.set_ylabel(metric)
    for name, rows in sorted(report["sites"].items()):
        points = [(r["round"], r["epsilon_spent"]) for r in rows if r["epsilon_spent"] is not None]
        if points:
            right.plot(*zip(*points, strict=True), marker="o", label=name)
    right.axhline(config.target_epsilon, color="grey", linestyle="--", linewidth=1, label="target per site")
    right.set_title("Epsilon spent per site (delta as each site set it)")
    right.set_xlabel("round")
    right.set_ylabel("epsilon (site ledger, recomputed)")
    for axes in (left, right):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=110)
    plt.close(figure)
