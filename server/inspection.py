"""Inspect one site's reply to a train request: what became of the site (:class:`SiteResult`) and its update.

A site is a peer the server does not control: its reply may be malformed, mistaken or malicious. This module turns
any reply into a :class:`SiteResult` without raising: an error reply is a crash; a refusal is a refusal; a reply that
claims to have trained is accepted only if its status, records, weight and tensors pass every rule
(:func:`server.validation.validate_update`), and is otherwise rejected with the rule it broke. Nothing a reply
contains can raise out of here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from flwr.app import ConfigRecord, Message, MetricRecord

from common.errors import UpdateRejectedError
from common.federation import protocol as p
from common.federation.rounds import SiteResult, Status
from server.validation import validate_update

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InspectedReply:
    """A reply's verdict, and for an accepted one the update (in the global adapter's dtypes) and its weight."""

    result: SiteResult
    update: dict[str, torch.Tensor] | None = None
    weight: float = 0.0


def crash_reason(text: str) -> str:
    """The useful line of a remote traceback: the last exception message (Flower wraps it several times)."""
    marker = "Message:"
    if marker in text:
        text = text.rsplit(marker, 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "unknown error"
    return last.strip("'>)").strip()


def inspect_train_reply(
    reply: Message,
    reference: Mapping[str, torch.Tensor],
    *,
    global_dtypes: Mapping[str, torch.dtype],
    max_update_norm: float,
) -> InspectedReply:
    """Classify one train reply.

    ``reference`` holds the current global values of the exchanged tensors in the upload dtype (what a valid update
    is compared with); an accepted update is returned cast to ``global_dtypes`` for aggregation.
    """
    node = reply.metadata.src_node_id
    if reply.has_error():
        reason = crash_reason(str(reply.error.reason))
        log.error("node %d crashed: %s", node, reason)
        return InspectedReply(SiteResult(node, f"node {node}", Status.CRASHED, reason))
    content = reply.content
    status = content.config_records.get(p.STATUS, ConfigRecord())
    name = str(status.get(p.SITE_NAME, f"node {node}"))
    metric_record = content.metric_records.get(p.METRICS, MetricRecord())
    metrics = {k: float(v) for k, v in metric_record.items() if isinstance(v, int | float)}
    state = status.get(p.STATE)
    if state == Status.REFUSED:
        reason = str(status.get(p.REASON, "refused"))
        log.warning("site %s (node %d) refused: %s; it will not be sampled again", name, node, reason)
        return InspectedReply(SiteResult(node, name, Status.REFUSED, reason, metrics))
    source = f"site {name} (node {node})"
    try:
        if state != Status.TRAINED:
            raise UpdateRejectedError(f"{source}: reply status {str(state)!r} is not {Status.TRAINED.value!r}")
        if list(content.array_records) != [p.ARRAYS]:
            raise UpdateRejectedError(f"{source}: expected exactly one ArrayRecord named {p.ARRAYS!r}")
        weight = metrics.get(p.NUM_EXAMPLES, 0.0)
        if not weight > 0:
            raise UpdateRejectedError(f"{source}: num-examples must be > 0; got {weight}")
        arrays = content.array_records[p.ARRAYS]
        update = p.arrays_to_adapter(arrays, source=source)
        norm = validate_update(update, reference, max_update_norm=max_update_norm, source=source)
    except UpdateRejectedError as exc:
        log.warning("rejected update: %s", exc)
        return InspectedReply(SiteResult(node, name, Status.REJECTED, str(exc), metrics))
    accepted = SiteResult(
        node, name, Status.TRAINED, "", metrics, update_norm=norm, upload_bytes=p.serialized_size(arrays)
    )
    return InspectedReply(accepted, {k: v.to(global_dtypes[k]) for k, v in update.items()}, weight)
