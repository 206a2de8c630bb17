"""Federated evaluation replies: read each one defensively, combine the metrics sites released.

Evaluate replies come from the same untrusted peers as train replies, so the same discipline applies: a reply that
is an error, a refusal, ``skipped``, or malformed in any way (a metric a site may not release, a value out of its
range, a wrong type) is left out with a log line, and nothing it holds can raise. The metrics are NOT differentially
private (each site opted in to release them) and only inform the operator; the global adapter never depends on
them. They are weighted as the run weights updates (``examples``: by held-out size; ``uniform``: equally).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from flwr.app import ConfigRecord, Message, MetricRecord

from common.federation import protocol as p
from common.federation.config import Weighting
from common.federation.rounds import Status
from server.identities import SiteIdentity
from server.inspection import METRIC_RULES, MetricRule, printable
from server.strategies.aggregation import weighted_mean_values

log = logging.getLogger(__name__)

#: The domain of each releasable metric.
EVALUATION_RULES: dict[str, MetricRule] = {
    "accuracy": MetricRule(high=1),
    "macro-f1": MetricRule(high=1),
    "loss": MetricRule(),
}

#: One site's evaluation: its held-out size and the metrics it released.
Evaluation = tuple[int, dict[str, float]]


def read_evaluation(reply: Message, site: SiteIdentity) -> Evaluation | None:
    """The held-out size and metrics of one evaluate reply, or None (logged) if it releases none or is malformed."""
    try:
        if reply.has_error():
            log.warning("evaluation failed at %s: %s", site.label, printable(str(reply.error.reason)))
            return None
        content = reply.content
        status = content.get(p.STATUS)
        state = status.get(p.STATE) if isinstance(status, ConfigRecord) else None
        if not isinstance(state, str) or state != Status.TRAINED:
            return None  # skipped (the site releases nothing) or refused
        record = content.get(p.METRICS)
        if not isinstance(record, MetricRecord):
            raise ValueError("no metrics record")
        unknown = sorted(set(record) - set(EVALUATION_RULES) - {p.NUM_EXAMPLES})
        if unknown:
            raise ValueError(f"{printable(unknown[0])!r} is not a releasable metric")
        examples = METRIC_RULES[p.NUM_EXAMPLES].check(p.NUM_EXAMPLES, record.get(p.NUM_EXAMPLES))
        metrics = {key: rule.check(key, record[key]) for key, rule in EVALUATION_RULES.items() if key in record}
        return int(examples), metrics
    except Exception as exc:  # whatever the reply holds, it only costs its own metrics
        log.warning("ignored the evaluation of %s: %s", site.label, printable(f"{type(exc).__name__}: {exc}"))
        return None


def combine_evaluations(evaluations: Sequence[Evaluation], weighting: Weighting) -> dict[str, float] | None:
    """The weighted mean of each metric over the sites that released it (None if none did)."""
    combined: dict[str, float] = {}
    for key in EVALUATION_RULES:
        having = [(examples, metrics[key]) for examples, metrics in evaluations if key in metrics]
        if having:
            weights = [float(n) if weighting == "examples" else 1.0 for n, _ in having]
            combined[key] = weighted_mean_values([value for _, value in having], weights)
    return combined or None
