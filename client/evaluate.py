"""Federated evaluation at a site: metrics of the global adapter on the site's held-out split.

Only a site that opted in (node config ``evaluate=true``) answers with metrics. These metrics are computed on raw
held-out data and released WITHOUT differential privacy; a site that must not release them keeps the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.runtime import site_data, site_model
from client.site import resolve_site
from common.federation import protocol as p
from common.federation.config import parse_run_config
from common.federation.rounds import Status
from common.model.adapter import load_adapter_state
from common.training.device import resolve_device
from common.training.evaluation import evaluate


def evaluate_round(message: Message, context: Context, *, run_config: Mapping[str, Any] | None = None) -> Message:
    """Handle one evaluate message (the ClientApp's ``@app.evaluate()``)."""
    config = parse_run_config(context.run_config if run_config is None else run_config)
    site = resolve_site(context.node_config, config)
    if not site.evaluate:
        status = ConfigRecord({p.STATE: Status.SKIPPED, p.SITE_NAME: site.site_name})
        return Message(RecordDict({p.METRICS: MetricRecord({p.NUM_EXAMPLES: 0}), p.STATUS: status}), reply_to=message)
    runtime = site_model(config)
    data = site_data(site, config, runtime.tokenizer)
    assert data.eval is not None  # a site that evaluates always holds out a split
    load_adapter_state(runtime.model, p.arrays_to_adapter(message.content.array_records[p.ARRAYS], source="server"))
    metrics = evaluate(
        runtime.model, data.eval, batch_size=config.training.eval_batch_size, device=resolve_device(site.device)
    )
    record = MetricRecord(
        {
            p.NUM_EXAMPLES: metrics.num_examples,
            "accuracy": metrics.accuracy,
            "macro-f1": metrics.macro_f1,
            "loss": metrics.loss,
        }
    )
    status = ConfigRecord({p.STATE: Status.TRAINED, p.SITE_NAME: site.site_name})
    return Message(RecordDict({p.METRICS: record, p.STATUS: status}), reply_to=message)
