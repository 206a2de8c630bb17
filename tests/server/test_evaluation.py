"""Federated evaluation replies are read defensively: a malformed one costs only its own metrics."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common.federation import protocol as p
from server.identities import SiteIdentity
from server.strategies.evaluation import combine_evaluations, read_evaluation

SITE = SiteIdentity(4, "hospital-a", None, "simulation")


def reply(content):
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    request = Message(RecordDict(), dst_node_id=4, message_type=MessageType.EVALUATE)
    return Message(content, reply_to=request)


def released(**metrics):
    return RecordDict({p.METRICS: MetricRecord(metrics), p.STATUS: ConfigRecord({p.STATE: "trained"})})


def test_released_metrics_are_read_and_combined_by_the_run_s_weighting():
    a = read_evaluation(reply(released(**{p.NUM_EXAMPLES: 30, "accuracy": 0.9, "loss": 0.3})), SITE)
    b = read_evaluation(reply(released(**{p.NUM_EXAMPLES: 10, "accuracy": 0.5})), SITE)
    assert a == (30, {"accuracy": 0.9, "loss": 0.3}) and b == (10, {"accuracy": 0.5})
    assert combine_evaluations([a, b], "examples") == pytest.approx({"accuracy": 0.8, "loss": 0.3})
    assert combine_evaluations([a, b], "uniform") == pytest.approx({"accuracy": 0.7, "loss": 0.3})
    assert combine_evaluations([], "examples") is None


@pytest.mark.parametrize(
    "content",
    [
        Error(code=0, reason="boom"),
        RecordDict({p.STATUS: ConfigRecord({p.STATE: "skipped"})}),
        RecordDict({p.STATUS: ConfigRecord({p.STATE: "refused", p.REASON: "labels-differ"})}),
        released(**{p.NUM_EXAMPLES: 30, "accuracy": 1.5}),
        released(**{p.NUM_EXAMPLES: 30, "accuracy": float("nan")}),
        released(**{p.NUM_EXAMPLES: 10**400, "accuracy": 0.5}),
        released(**{p.NUM_EXAMPLES: [30], "accuracy": 0.5}),
        released(**{p.NUM_EXAMPLES: 30, "roc-auc": 0.5}),
        released(**{"accuracy": 0.5}),
        RecordDict({p.METRICS: ConfigRecord({p.NUM_EXAMPLES: 3}), p.STATUS: ConfigRecord({p.STATE: "trained"})}),
        RecordDict({p.STATUS: ConfigRecord({p.STATE: b"trained"})}),
    ],
)
def test_anything_else_is_left_out_without_raising(content):
    assert read_evaluation(reply(content), SITE) is None
