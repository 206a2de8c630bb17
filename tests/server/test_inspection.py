"""Reply inspection: every reply, however malformed, becomes one SiteResult and never an exception."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common.federation import protocol as p
from common.federation.rounds import Status
from server.inspection import crash_reason, inspect_train_reply

REFERENCE = {"x.lora_B.weight": torch.zeros(4, 2, dtype=torch.float16), "head": torch.zeros(3, dtype=torch.float16)}
DTYPES = {k: torch.float32 for k in REFERENCE}


def reply_from(node: int, content: RecordDict | Error) -> Message:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    request = Message(content=RecordDict(), message_type=MessageType.TRAIN, dst_node_id=node)
    return Message(content, reply_to=request)


def trained(tensors=None, metrics=None, state=Status.TRAINED, extra_records=None) -> RecordDict:
    tensors = tensors if tensors is not None else {k: torch.full_like(v, 0.5) for k, v in REFERENCE.items()}
    records = {
        p.ARRAYS: p.adapter_to_arrays(tensors),
        p.METRICS: MetricRecord(metrics if metrics is not None else {p.NUM_EXAMPLES: 40}),
        p.STATUS: ConfigRecord({p.STATE: state, p.SITE_NAME: "site-a"}),
    }
    return RecordDict({**records, **(extra_records or {})})


def inspect(reply):
    return inspect_train_reply(reply, REFERENCE, global_dtypes=DTYPES, max_update_norm=10.0)


def test_an_accepted_update_comes_back_in_the_global_dtype_with_its_weight_and_norm():
    inspected = inspect(reply_from(5, trained()))
    assert inspected.result.status is Status.TRAINED and inspected.result.site_name == "site-a"
    assert inspected.weight == 40.0
    assert inspected.update is not None and all(t.dtype == torch.float32 for t in inspected.update.values())
    assert inspected.result.update_norm == pytest.approx((11 * 0.25) ** 0.5)
    assert inspected.result.upload_bytes > 0


def test_an_error_reply_is_a_crash_with_the_last_exception_line():
    error = Error(code=0, reason="Traceback ...\nMessage: 'ValueError: the data file is gone'>)")
    inspected = inspect(reply_from(6, error))
    assert inspected.result.status is Status.CRASHED and inspected.update is None
    assert inspected.result.reason == "ValueError: the data file is gone"
    assert inspected.result.site_name == "node 6"


def test_a_refusal_carries_its_reason_and_no_update():
    content = RecordDict(
        {
            p.METRICS: MetricRecord({p.NUM_EXAMPLES: 0}),
            p.STATUS: ConfigRecord({p.STATE: Status.REFUSED, p.SITE_NAME: "site-b", p.REASON: "budget gone"}),
        }
    )
    inspected = inspect(reply_from(7, content))
    assert (inspected.result.status, inspected.result.reason, inspected.update) == (Status.REFUSED, "budget gone", None)


@pytest.mark.parametrize(
    ("content", "rule"),
    [
        (trained(state="done"), "reply status 'done'"),
        (trained(state=Status.SKIPPED), "reply status 'skipped'"),
        (trained(metrics={}), "num-examples must be > 0"),
        (trained(metrics={p.NUM_EXAMPLES: -3}), "num-examples must be > 0"),
        (trained(metrics={p.NUM_EXAMPLES: float("nan")}), "num-examples must be > 0"),
        (trained(extra_records={"more": ArrayRecord()}), "exactly one ArrayRecord"),
        (trained(tensors={"head": torch.zeros(3, dtype=torch.float16)}), "missing tensor"),
        (trained(tensors={k: v.float() for k, v in REFERENCE.items()}), "dtype"),
        (trained(tensors={k: torch.full_like(v, 100.0) for k, v in REFERENCE.items()}), "exceeds the bound"),
    ],
)
def test_a_bad_reply_is_rejected_naming_the_site_and_the_rule(content, rule):
    inspected = inspect(reply_from(8, content))
    assert inspected.result.status is Status.REJECTED and inspected.update is None
    assert rule in inspected.result.reason and "site site-a (node 8)" in inspected.result.reason


def test_crash_reason_without_a_marker_takes_the_last_line():
    assert crash_reason("first\n  second line  \n") == "second line"
    assert crash_reason("") == "unknown error"
