"""Federated evaluation at a site: metrics of the global adapter on the site's held-out split.

Only the metrics the SITE named in its own node config (``release-metrics``, from
:data:`~common.federation.protocol.RELEASABLE_METRICS`) leave it, with the held-out size. They are computed on raw
held-out data and released WITHOUT differential privacy: a site that must not release them names none (the
default), holds no split out, and answers ``skipped``. The server cannot ask for more than the site named.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flwr.app import Context, Message

from client.site import resolve_site
from client.work import Refusal, SiteWork, prepare_work
from common.errors import ConfigError, ModelError, UpdateRejectedError
from common.federation import protocol as p
from common.federation.config import FederationConfig, parse_run_config
from common.model.adapter import load_adapter_state
from common.training.batches import TokenizedTexts
from common.training.causal_batches import TokenizedPairs
from common.training.causal_eval import evaluate_causal
from common.training.device import resolve_device
from common.training.evaluation import evaluate

if TYPE_CHECKING:
    import torch

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
    work = prepare_work(site, config)
    if isinstance(work, Refusal):
        return _refuse(message, work.code, f"site {site.site_name}: {work.detail}")
    if work.eval is None:  # a site that releases metrics always holds out a split
        raise RuntimeError(f"site {site.site_name} releases metrics but holds out no data")
    try:
        if p.ARRAYS not in message.content.array_records:
            raise ConfigError(f"an evaluate request needs an {p.ARRAYS!r} record")
        state = p.arrays_to_adapter(message.content.array_records[p.ARRAYS], source="global adapter from server")
        load_adapter_state(work.runtime.model, state)
    except (ConfigError, UpdateRejectedError, ModelError) as exc:
        return _refuse(message, "bad-request", f"site {site.site_name}: {exc}")
    num_examples, computed = _held_out_metrics(work, config, resolve_device(site.device))
    # A generate run computes only the loss: a site that named classification metrics releases the loss alone.
    released = {name: computed[name] for name in site.release_metrics if name in computed}
    return p.evaluate_reply(message, num_examples=num_examples, metrics=released)


def _held_out_metrics(work: SiteWork, config: FederationConfig, device: torch.device) -> tuple[int, dict[str, float]]:
    """The held-out size and every releasable metric the run's task computes, by wire name."""
    if work.task == "generate":
        assert isinstance(work.eval, TokenizedPairs)
        causal = evaluate_causal(
            work.runtime.model,
            work.eval,
            max_tokens=config.max_tokens,
            batch_size=config.training.eval_batch_size,
            device=device,
        )
        return causal.num_examples, {"loss": causal.loss}
    assert isinstance(work.eval, TokenizedTexts)
    metrics = evaluate(work.runtime.model, work.eval, batch_size=config.training.eval_batch_size, device=device)
    return metrics.num_examples, {"accuracy": metrics.accuracy, "macro-f1": metrics.macro_f1, "loss": metrics.loss}


def _refuse(message: Message, reason: str, detail: str) -> Message:
    log.warning("refused to evaluate (%s): %s", reason, detail)
    return p.refusal_reply(message, reason)
