"""Reply inspection: every reply, however malformed, becomes one SiteResult and never an exception."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common.federation import protocol as p
from common.federation.rounds import Status
from server import inspection
from server.identities import SiteIdentity
from server.inspection import MAX_REASON, crash_reason, inspect_train_reply

REFERENCE = {"x.lora_B.weight": torch.zeros(4, 2, dtype=torch.float16), "head": torch.zeros(3, dtype=torch.float16)}
DTYPES = {k: torch.float32 for k in REFERENCE}
SITE = SiteIdentity(8, "hospital-a", "SHA256:abc", "enrolled")
LEDGER = {p.LEDGER_ID: "ledger-1", p.LEDGER_SEQ: 4, p.LEDGER_HEAD: "a" * 64, p.LEDGER_PROOF: ["b" * 64, "c" * 64]}


def reply_from(node: int, content: RecordDict | Error) -> Message:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    request = Message(content=RecordDict(), message_type=MessageType.TRAIN, dst_node_id=node)
    return Message(content, reply_to=request)


def trained(tensors=None, metrics=None, state=Status.TRAINED, extra_records=None, ledger=None) -> RecordDict:
    tensors = tensors if tensors is not None else {k: torch.full_like(v, 0.5) for k, v in REFERENCE.items()}
    records = {
        p.ARRAYS: p.adapter_to_arrays(tensors),
        p.METRICS: MetricRecord(metrics if metrics is not None else {p.NUM_EXAMPLES: 40, p.EPSILON_SPENT: 1.5}),
        p.STATUS: ConfigRecord({p.STATE: state}),
        p.LEDGER: ConfigRecord(ledger if ledger is not None else LEDGER),
    }
    return RecordDict({**records, **(extra_records or {})})


def inspect(reply, site=SITE):
    return inspect_train_reply(reply, site, REFERENCE, global_dtypes=DTYPES, max_update_norm=10.0)


def test_an_accepted_update_comes_back_in_the_global_dtype_with_its_weight_norm_and_claim():
    inspected = inspect(reply_from(8, trained()))
    result = inspected.result
    assert result.status is Status.TRAINED and result.site_name == "hospital-a"
    assert result.key_fingerprint == "SHA256:abc" and result.node_id == 8
    assert inspected.num_examples == 40 and result.metrics == {p.NUM_EXAMPLES: 40.0, p.EPSILON_SPENT: 1.5}
    assert inspected.update is not None and all(t.dtype == torch.float32 for t in inspected.update.values())
    assert result.update_norm == pytest.approx((11 * 0.25) ** 0.5)
    assert result.upload_bytes > 0
    assert inspected.claim is not None and inspected.claim.head.seq == 4 and len(inspected.claim.proof) == 2


def test_an_error_reply_is_a_crash_of_the_identity_with_the_last_exception_line():
    error = Error(code=0, reason="Traceback ...\nMessage: 'ValueError: the data file is gone'>)")
    inspected = inspect(reply_from(1, error))  # sent by the SuperLink (node 1) on behalf of the site
    assert inspected.result.status is Status.CRASHED and inspected.update is None
    assert inspected.result.reason == "ValueError: the data file is gone"
    assert (inspected.result.site_name, inspected.result.node_id) == ("hospital-a", 8)


def test_a_refusal_carries_its_reason_code_and_an_unknown_code_is_not_echoed():
    refusal = RecordDict({p.STATUS: ConfigRecord({p.STATE: Status.REFUSED, p.REASON: "budget-exhausted"})})
    inspected = inspect(reply_from(7, refusal))
    assert (inspected.result.status, inspected.result.reason, inspected.update) == (
        Status.REFUSED,
        "budget-exhausted",
        None,
    )
    odd = RecordDict({p.STATUS: ConfigRecord({p.STATE: Status.REFUSED, p.REASON: "\x1b[31mrm -rf /"})})
    assert inspect(reply_from(7, odd)).result.reason == "refused (no recognised reason code)"


def test_a_reply_is_named_by_the_identity_never_by_a_name_in_it():
    content = trained(state=Status.TRAINED)
    content[p.STATUS] = ConfigRecord({p.STATE: Status.TRAINED, "site-name": "site"})
    inspected = inspect(reply_from(8, content))
    assert inspected.result.site_name == "hospital-a" and inspected.result.status is Status.REJECTED
    unnamed = inspect(reply_from(9, trained()), SiteIdentity.unregistered(9))
    assert unnamed.result.site_name == "node 9" and unnamed.result.status is Status.TRAINED


@pytest.mark.parametrize(
    ("content", "rule"),
    [
        (trained(state="done"), "reply status 'done'"),
        (trained(state=Status.SKIPPED), "reply status 'skipped'"),
        (trained(metrics={}), "has no 'num-examples'"),
        (trained(metrics={p.NUM_EXAMPLES: -3}), "'num-examples' must be in [1, "),
        (trained(metrics={p.NUM_EXAMPLES: 0}), "'num-examples' must be in [1, "),
        (trained(metrics={p.NUM_EXAMPLES: float("nan")}), "must be finite"),
        (trained(metrics={p.NUM_EXAMPLES: float("inf")}), "must be finite"),
        (trained(metrics={p.NUM_EXAMPLES: 2.5}), "must be an integer"),
        (trained(metrics={p.NUM_EXAMPLES: 2**70}), "integer of 71 bits"),
        (trained(metrics={p.NUM_EXAMPLES: 10**400}), "must be at most"),
        (trained(metrics={p.NUM_EXAMPLES: 1e300}), "must be in [1, "),
        (trained(metrics={p.NUM_EXAMPLES: [40]}), "must be a number; got a list"),
        (trained(metrics={p.NUM_EXAMPLES: 40, "train-loss": 0.3}), "'train-loss' is not a train metric"),
        (trained(metrics={p.NUM_EXAMPLES: 40, p.DELTA: 1.0}), "'delta' must be in (0, 1)"),
        (trained(metrics={p.NUM_EXAMPLES: 40, p.EPSILON_SPENT: -1.0}), "'epsilon-spent' must be in [0, inf]"),
        (trained(extra_records={"more": ArrayRecord()}), "unexpected record 'more'"),
        (trained(extra_records={"notes": ConfigRecord({"a": 1})}), "unexpected record 'notes'"),
        (trained(tensors={"head": torch.zeros(3, dtype=torch.float16)}), "missing tensor"),
        (trained(tensors={k: v.float() for k, v in REFERENCE.items()}), "dtype"),
        (trained(tensors={k: torch.full_like(v, 100.0) for k, v in REFERENCE.items()}), "exceeds the bound"),
        (trained(ledger={**LEDGER, p.LEDGER_SEQ: -1}), "'ledger-seq' must be an integer >= 0"),
        (trained(ledger={**LEDGER, p.LEDGER_SEQ: True}), "'ledger-seq' must be an integer >= 0"),
        (trained(ledger={**LEDGER, p.LEDGER_HEAD: "A" * 64}), "'ledger-head' must be a sha256 hex digest"),
        (trained(ledger={**LEDGER, p.LEDGER_HEAD: b"a" * 32}), "'ledger-head' must be a sha256 hex digest"),
        (trained(ledger={**LEDGER, p.LEDGER_PROOF: ["b" * 63]}), "'ledger-proof' must be a list"),
        (trained(ledger={**LEDGER, p.LEDGER_ID: ""}), "'ledger-id' must be a printable string"),
        (trained(ledger={**LEDGER, "extra": 1}), "unexpected ['extra']"),
    ],
)
def test_a_bad_reply_is_rejected_naming_the_site_and_the_rule(content, rule):
    inspected = inspect(reply_from(8, content))
    assert inspected.result.status is Status.REJECTED and inspected.update is None
    assert rule in inspected.result.reason and "site hospital-a (node 8)" in inspected.result.reason


def test_missing_records_are_rejections():
    for name in (p.ARRAYS, p.METRICS, p.STATUS, p.LEDGER):
        content = trained()
        del content[name]
        assert inspect(reply_from(8, content)).result.status is Status.REJECTED, name


def test_a_rejected_update_keeps_its_well_formed_ledger_claim_and_its_metrics():
    inspected = inspect(reply_from(8, trained(tensors={k: v.double() for k, v in REFERENCE.items()})))
    assert inspected.result.status is Status.REJECTED and inspected.claim is not None
    assert inspected.result.metrics[p.EPSILON_SPENT] == 1.5


def test_anything_unexpected_is_a_rejection_naming_the_exception_type(monkeypatch):
    def explode(*args, **kwargs):
        raise OverflowError("cannot convert float infinity to integer")

    monkeypatch.setattr(inspection, "validate_update", explode)
    inspected = inspect(reply_from(8, trained()))
    assert inspected.result.status is Status.REJECTED and "OverflowError" in inspected.result.reason


def test_crash_reason_takes_the_last_line_and_keeps_it_short_and_printable():
    assert crash_reason("first\n  second line  \n") == "second line"
    assert crash_reason("") == "unknown error"
    long = crash_reason("x\x07" * 1000)
    assert len(long) == MAX_REASON and "\x07" not in long
