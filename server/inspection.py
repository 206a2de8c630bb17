"""Inspect one site's reply to a train request: what became of the site (:class:`SiteResult`) and its update.

A site is a peer the server does not control: its reply may be malformed, mistaken or malicious. This module turns
any reply into a :class:`SiteResult` and never raises: an error reply is a crash; a refusal is a refusal; a reply
that claims to have trained is accepted only if its records are exactly the protocol's
(:mod:`common.federation.protocol`), every metric is a number of the right kind in its range (:data:`METRIC_RULES`),
its ledger record is well formed (:func:`server.witness.read_ledger_claim`) and its tensors pass every rule
(:func:`server.validation.validate_update`); otherwise it is rejected with the rule it broke. Anything unexpected
while inspecting (a value no rule foresaw) is a rejection naming the exception's type, never an exception.

The rules that need the run's memory (the witnessed ledger head, the site's earlier ``num-examples``, the share of
the round's weight) are applied afterwards by the strategy (:mod:`server.strategies.admission`). The site is named
by its authenticated identity (:mod:`server.identities`), which the caller found from the request the reply
answers, never from the reply.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Concatenate, ParamSpec

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from common.errors import UpdateRejectedError
from common.federation import protocol as p
from common.federation.rounds import SiteResult, Status
from server.identities import SiteIdentity
from server.validation import validate_update
from server.witness import LedgerClaim, read_ledger_claim

log = logging.getLogger(__name__)
P = ParamSpec("P")

#: The largest ``num-examples`` (and any integer metric) accepted: 2**53, the last integer float64 holds exactly.
#: Far above any real dataset; it keeps every sum of weights finite and exact.
MAX_NUM_EXAMPLES = 2**53
#: Longest text kept from a site's crash report (it is the site's text: kept short and printable).
MAX_REASON = 300
#: The records of a trained reply, each with its type: no more, no fewer.
TRAINED_RECORDS: dict[str, type] = {
    p.ARRAYS: ArrayRecord,
    p.METRICS: MetricRecord,
    p.STATUS: ConfigRecord,
    p.LEDGER: ConfigRecord,
}


@dataclass(frozen=True)
class MetricRule:
    """A train metric's domain: a finite number (an integer where ``integral``) in [low, high], ends open or not."""

    low: float = 0.0
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    integral: bool = False

    def check(self, key: str, value: object) -> float:
        """``value`` as a float, or UpdateRejectedError naming ``key`` and the rule."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key!r} must be a number; got a {type(value).__name__}")
        if isinstance(value, int) and abs(value) > MAX_NUM_EXAMPLES:  # before float(): 10**400 would overflow
            raise ValueError(f"{key!r} must be at most {MAX_NUM_EXAMPLES}; got an integer of {value.bit_length()} bits")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{key!r} must be finite; got {number}")
        if self.integral and not number.is_integer():
            raise ValueError(f"{key!r} must be an integer; got {number}")
        below = number <= self.low if self.low_open else number < self.low
        above = number >= self.high if self.high_open else number > self.high
        if below or above:
            low, high = "(" if self.low_open else "[", ")" if self.high_open else "]"
            raise ValueError(f"{key!r} must be in {low}{self.low:g}, {self.high:g}{high}; got {number:g}")
        return number


#: Every metric a train reply may carry, and its domain (``num-examples`` is required, the others optional).
METRIC_RULES: dict[str, MetricRule] = {
    p.NUM_EXAMPLES: MetricRule(low=1, high=MAX_NUM_EXAMPLES, integral=True),
    p.EPSILON_SPENT: MetricRule(),
    p.EPSILON_ROUND: MetricRule(),
    p.DELTA: MetricRule(high=1, low_open=True, high_open=True),
    p.NOISE_MULTIPLIER: MetricRule(),
    p.SAMPLE_RATE: MetricRule(high=1, low_open=True),
    p.STEPS: MetricRule(high=MAX_NUM_EXAMPLES, integral=True),
    p.MAX_GRAD_NORM: MetricRule(low_open=True),
}


@dataclass(frozen=True)
class InspectedReply:
    """A reply's verdict; for an accepted one the update (in the global adapter's dtypes) and its ``num-examples``.

    ``claim`` is the reply's well-formed ledger record (also kept when the tensors were rejected: the site spent
    budget, and the head is still witnessed).
    """

    result: SiteResult
    update: dict[str, torch.Tensor] | None = None
    num_examples: int = 0
    claim: LedgerClaim | None = None


def crash_reason(text: str) -> str:
    """The useful line of a remote traceback: the last exception message (Flower wraps it several times)."""
    marker = "Message:"
    if marker in text:
        text = text.rsplit(marker, 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "unknown error"
    return printable(last.strip("'>)").strip())


def printable(text: str) -> str:
    """``text`` from a peer made safe for one log line: control characters replaced, at most :data:`MAX_REASON`."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned if len(cleaned) <= MAX_REASON else cleaned[: MAX_REASON - 3] + "..."


def read_train_metrics(record: Mapping[str, object], *, source: str) -> dict[str, float]:
    """The reply's metrics, each checked against :data:`METRIC_RULES`; UpdateRejectedError at the first problem."""
    unknown = sorted(set(record) - set(METRIC_RULES))
    if unknown:
        raise UpdateRejectedError(f"{source}: {printable(unknown[0])!r} is not a train metric")
    if p.NUM_EXAMPLES not in record:
        raise UpdateRejectedError(f"{source}: the reply has no {p.NUM_EXAMPLES!r}")
    try:
        return {key: METRIC_RULES[key].check(key, value) for key, value in record.items()}
    except ValueError as exc:
        raise UpdateRejectedError(f"{source}: {exc}") from None


def _rejected_when_unforeseen(
    inspect: Callable[Concatenate[Message, SiteIdentity, P], InspectedReply],
) -> Callable[Concatenate[Message, SiteIdentity, P], InspectedReply]:
    """Turn any exception ``inspect`` raises on a reply into a rejection of that reply: the round keeps going."""

    @functools.wraps(inspect)
    def guarded(reply: Message, site: SiteIdentity, *args: P.args, **kwargs: P.kwargs) -> InspectedReply:
        try:
            return inspect(reply, site, *args, **kwargs)
        except Exception as exc:  # a reply no rule foresaw: reject it, whatever it holds
            log.exception("%s: unexpected %s while inspecting the reply; rejected", site.label, type(exc).__name__)
            reason = f"{site.label}: the reply could not be inspected ({type(exc).__name__})"
            return InspectedReply(_result(site, Status.REJECTED, reason))

    return guarded


def _result(
    site: SiteIdentity,
    status: Status,
    reason: str = "",
    *,
    metrics: Mapping[str, float] | None = None,
    update_norm: float | None = None,
    upload_bytes: int = 0,
) -> SiteResult:
    return SiteResult(
        site.node_id,
        site.name,
        status,
        reason,
        metrics=dict(metrics or {}),
        update_norm=update_norm,
        upload_bytes=upload_bytes,
        key_fingerprint=site.key_fingerprint,
    )


@_rejected_when_unforeseen
def inspect_train_reply(
    reply: Message,
    site: SiteIdentity,
    reference: Mapping[str, torch.Tensor],
    *,
    global_dtypes: Mapping[str, torch.dtype],
    max_update_norm: float,
) -> InspectedReply:
    """Classify the reply of ``site`` (the identity whose request it answers); never raises.

    ``reference`` holds the current global values of the exchanged tensors in this round's upload dtype (what a
    valid update is compared with); an accepted update is returned cast to ``global_dtypes`` for aggregation.
    """
    source = site.label
    if reply.has_error():
        reason = crash_reason(str(reply.error.reason))
        log.error("%s crashed: %s", source, reason)
        return InspectedReply(_result(site, Status.CRASHED, reason))
    content = reply.content
    status = content.get(p.STATUS)
    state = status.get(p.STATE) if isinstance(status, ConfigRecord) else None
    if isinstance(state, str) and state == Status.REFUSED:
        code = status.get(p.REASON) if isinstance(status, ConfigRecord) else None
        reason = code if isinstance(code, str) and code in p.REFUSAL_REASONS else "refused (no recognised reason code)"
        log.warning("%s refused: %s; it will not be sampled again", source, reason)
        return InspectedReply(_result(site, Status.REFUSED, reason))
    claim: LedgerClaim | None = None
    metrics: dict[str, float] = {}
    try:
        if not isinstance(state, str) or state != Status.TRAINED:
            shown = printable(repr(str(state) if isinstance(state, str) else state))
            raise UpdateRejectedError(f"{source}: reply status {shown} is not {Status.TRAINED.value!r}")
        _check_records(content, source)
        status_keys = sorted(set(content.config_records[p.STATUS]) - {p.STATE})
        if status_keys:
            raise UpdateRejectedError(f"{source}: unexpected status key {printable(status_keys[0])!r}")
        claim = read_ledger_claim(content.config_records[p.LEDGER], source=source)
        metrics = read_train_metrics(content.metric_records[p.METRICS], source=source)
        arrays = content.array_records[p.ARRAYS]
        update = p.arrays_to_adapter(arrays, source=source)
        norm = validate_update(update, reference, max_update_norm=max_update_norm, source=source)
    except UpdateRejectedError as exc:
        log.warning("rejected update: %s", exc)
        return InspectedReply(_result(site, Status.REJECTED, printable(str(exc)), metrics=metrics), claim=claim)
    accepted = _result(site, Status.TRAINED, metrics=metrics, update_norm=norm, upload_bytes=p.serialized_size(arrays))
    cast = {key: tensor.to(global_dtypes[key]) for key, tensor in update.items()}
    return InspectedReply(accepted, cast, int(metrics[p.NUM_EXAMPLES]), claim)


def _check_records(content: Mapping[str, object], source: str) -> None:
    """Exactly the records of :data:`TRAINED_RECORDS`, each of its type."""
    for name, record in content.items():
        expected = TRAINED_RECORDS.get(name)
        if expected is None or not isinstance(record, expected):
            raise UpdateRejectedError(f"{source}: unexpected record {printable(str(name))!r} in a train reply")
    missing = sorted(set(TRAINED_RECORDS) - set(content))
    if missing:
        raise UpdateRejectedError(f"{source}: the train reply has no {missing[0]!r} record")
