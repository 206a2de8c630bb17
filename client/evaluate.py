"""Federated evaluation at a site: metrics of the global adapter on the site's held-out split.

Only the metrics the SITE named in its own node config (``release-metrics``, from
:data:`~common.federation.protocol.RELEASABLE_METRICS`) leave it, with the held-out size. They are computed on raw
held-out data and released WITHOUT differential privacy: a site that must not release them names none (the
default), holds no split out, and answers ``skipped``. The server cannot ask for more than the site named.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flwr.app import Context, Message

from client.runtime import labels_problem, site_data, site_model
from client.site import resolve_site
from common.errors import ConfigError, ModelError, UpdateRejectedError
from common.federation import protocol as p
from common.federation.config import parse_run_config
from common.model.adapter import load_adapter_state
from common.training.device import resolve_device
from common.training.evaluation import EvalMetrics, evaluate

log = logging.getLogger(__name__)


def evaluate_round(message: Message, context: Context, *, run_config: Mapping[str, Any] | None = None) -> Message:
    """Handle one evaluate message (the ClientApp's ``@app.evaluate()``)."""
    try:
        config = parse_run_config(context.run_config if run_config is None else run_config)
    except ConfigError as exc:
        return _refuse(message, "bad-request", f"the server's run config is invalid: {exc}")
    site = resolve_site(context.node_config, config)
    if not site.release_metrics:
        return p.evaluate_reply(message, num_examples=0, metrics={})
    problem = labels_problem(site, config)
    if problem is not None:
        return _refuse(message, "labels-differ", f"site {site.site_name}: {problem}")
    runtime = site_model(config)
    data = site_data(site, config, runtime.tokenizer)
    if data.eval is None:  # a site that releases metrics always holds out a split
        raise RuntimeError(f"site {site.site_name} releases metrics but holds out no data")
    try:
        if p.ARRAYS not in message.content.array_records:
            raise ConfigError(f"an evaluate request needs an {p.ARRAYS!r} record")
        state = p.arrays_to_adapter(message.content.array_records[p.ARRAYS], source="global adapter from server")
        load_adapter_state(runtime.model, state)
    except (ConfigError, UpdateRejectedError, ModelError) as exc:
        return _refuse(message, "bad-request", f"site {site.site_name}: {exc}")
    metrics = evaluate(
        runtime.model, data.eval, batch_size=config.training.eval_batch_size, device=resolve_device(site.device)
    )
    released = {name: _metric(metrics, name) for name in site.release_metrics}
    return p.evaluate_reply(message, num_examples=metrics.num_examples, metrics=released)


def _metric(metrics: EvalMetrics, name: str) -> float:
    """One releasable metric by its wire name."""
    values = {"accuracy": metrics.accuracy, "macro-f1": metrics.macro_f1, "loss": metrics.loss}
    return values[name]


def _refuse(message: Message, reason: str, detail: str) -> Message:
    log.warning("refused to evaluate (%s): %s", reason, detail)
    return p.refusal_reply(message, reason)
