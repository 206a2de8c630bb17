"""A site's release whitelist: what a real train or evaluate round puts on the wire, key by key, and nothing else.

The issue: "A whitelist of what a site releases: the DP adapter update and public metadata only (N, the spend and
the mechanism parameters sigma, q, steps, clip, delta) ... A test fails if any other key appears in a train or
evaluate reply." And a malformed request is a refusal with a code, never a crash whose message reaches the server.
"""

from __future__ import annotations

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from client.evaluate import evaluate_round
from client.train import train_round
from common.federation import protocol as p
from common.federation.rounds import Status
from common.privacy.chain import is_digest
from tests.client.test_train_round import as_server, assert_refused, request, site_context
from tests.flower_helpers import make_sites


def assert_train_whitelist(reply: Message) -> None:
    """Exactly: arrays (DP tensors), metrics (TRAIN_METRICS), status (state), ledger (LEDGER_KEYS)."""
    content = reply.content
    assert set(content.array_records) == {p.ARRAYS}
    assert set(content.metric_records) == {p.METRICS}
    assert set(content.config_records) == {p.STATUS, p.LEDGER}
    assert set(content.metric_records[p.METRICS]) == p.TRAIN_METRICS
    assert dict(content.config_records[p.STATUS]) == {p.STATE: Status.TRAINED.value}
    ledger = content.config_records[p.LEDGER]
    assert set(ledger) == p.LEDGER_KEYS
    assert isinstance(ledger[p.LEDGER_ID], str) and isinstance(ledger[p.LEDGER_SEQ], int)
    assert is_digest(ledger[p.LEDGER_HEAD]) and all(is_digest(d) for d in ledger[p.LEDGER_PROOF])


def evaluate_request(initial) -> Message:
    """An evaluate request as the server's strategy sends it."""
    as_server()
    content = RecordDict({p.ARRAYS: p.adapter_to_arrays(initial), p.CONFIG: ConfigRecord({p.SERVER_ROUND: 1})})
    return Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=1)


def test_a_real_train_round_releases_exactly_the_whitelist(federation):
    config, initial, data, tmp_path = federation
    site = make_sites(tmp_path, [data], release_metrics=())[0]
    reply = train_round(request(initial), site_context(site, config))
    assert_train_whitelist(reply)
    metrics = reply.content.metric_records[p.METRICS]
    # public metadata only: N, and the mechanism and spend the ledger charged
    assert metrics[p.NUM_EXAMPLES] == 400 and metrics[p.SAMPLE_RATE] == pytest.approx(32 / 400)
    assert reply.content.config_records[p.LEDGER][p.LEDGER_PROOF] == []  # first contact: nothing witnessed


@pytest.mark.parametrize(
    ("released", "expected"),
    [
        (("accuracy", "macro-f1", "loss"), {"accuracy", "macro-f1", "loss"}),
        (("accuracy",), {"accuracy"}),
    ],
)
def test_an_evaluate_round_releases_only_the_metrics_the_site_named(federation, released, expected):
    config, initial, data, tmp_path = federation
    site = make_sites(tmp_path, [data], release_metrics=released)[0]
    reply = evaluate_round(evaluate_request(initial), site_context(site, config))
    assert set(reply.content.config_records) == {p.STATUS} and not reply.content.array_records
    assert dict(reply.content.config_records[p.STATUS]) == {p.STATE: Status.TRAINED.value}
    assert set(reply.content.metric_records) == {p.METRICS}
    assert set(reply.content.metric_records[p.METRICS]) == {p.NUM_EXAMPLES, *expected}
    assert reply.content.metric_records[p.METRICS][p.NUM_EXAMPLES] == 80  # the held-out 20% of 400


def test_a_site_that_releases_no_metric_says_skipped_and_nothing_else(federation):
    config, initial, data, tmp_path = federation
    site = make_sites(tmp_path, [data], release_metrics=())[0]
    reply = evaluate_round(evaluate_request(initial), site_context(site, config))
    assert dict(reply.content.config_records) == {p.STATUS: {p.STATE: Status.SKIPPED.value}}
    assert not reply.content.metric_records and not reply.content.array_records


def test_the_builders_refuse_keys_outside_the_whitelist():
    as_server()
    message = Message(content=RecordDict(), message_type=MessageType.TRAIN, dst_node_id=1)
    with pytest.raises(ValueError, match="refusal reason"):
        p.refusal_reply(message, "budget gone for dataset /data/site-a.jsonl")  # a free-text reason leaks detail
    with pytest.raises(ValueError, match="releasable metrics"):
        p.evaluate_reply(message, num_examples=10, metrics={"train-loss": 0.3})


MALFORMED = {
    "round as text": {p.SERVER_ROUND: "1"},
    "round zero": {p.SERVER_ROUND: 0},
    "round as bool": {p.SERVER_ROUND: True},
    "round as float": {p.SERVER_ROUND: 1.5},
    "no round": {p.SERVER_ROUND: None},
    "run id as int": {p.RUN_ID: 5},
    "empty run id": {p.RUN_ID: ""},
    "huge run id": {p.RUN_ID: "x" * 10_000},
    "negative rounds": {p.NUM_ROUNDS: -1},
    "precision float64": {p.UPLOAD_PRECISION: "float64"},
    "precision as int": {p.UPLOAD_PRECISION: 16},
    "witness seq as text": {p.WITNESSED_LEDGER_ID: "l", p.WITNESSED_SEQ: "3", p.WITNESSED_HASH: "a" * 64},
    "witness negative seq": {p.WITNESSED_LEDGER_ID: "l", p.WITNESSED_SEQ: -1, p.WITNESSED_HASH: "a" * 64},
    "witness hash not hex": {p.WITNESSED_LEDGER_ID: "l", p.WITNESSED_SEQ: 3, p.WITNESSED_HASH: "xyz"},
    "witness hash upper": {p.WITNESSED_LEDGER_ID: "l", p.WITNESSED_SEQ: 3, p.WITNESSED_HASH: "A" * 64},
    "witness id only": {p.WITNESSED_LEDGER_ID: "l"},
    "witness id as int": {p.WITNESSED_LEDGER_ID: 7, p.WITNESSED_SEQ: 3, p.WITNESSED_HASH: "a" * 64},
}


@pytest.mark.parametrize("change", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_request_is_a_refusal_not_a_crash(federation, change):
    config, initial, data, tmp_path = federation
    site = make_sites(tmp_path, [data])[0]
    assert_refused(train_round(request(initial, **change), site_context(site, config)), "bad-request")
    assert not site.ledger_path.exists(), "nothing may be reserved for a malformed request"


def test_a_request_without_arrays_or_with_a_bad_run_config_is_refused(federation):
    config, initial, data, tmp_path = federation
    site = make_sites(tmp_path, [data])[0]
    bare = request(initial)
    del bare.content[p.ARRAYS]
    assert_refused(train_round(bare, site_context(site, config)), "bad-request")
    context = Context(
        run_id=1, node_id=1, node_config=site.to_node_config(), state=RecordDict(), run_config={"batch-size": "many"}
    )
    assert_refused(train_round(request(initial), context), "bad-request")
    assert_refused(evaluate_round(evaluate_request(initial), context), "bad-request")
    assert not site.ledger_path.exists()


@pytest.mark.parametrize(("asked", "dtype"), [("float32", torch.float32), ("float16", torch.float16), (None, None)])
def test_the_upload_precision_is_the_requests_else_the_run_configs(federation, asked, dtype):
    config, initial, data, tmp_path = federation
    site = make_sites(tmp_path, [data], release_metrics=())[0]
    reply = train_round(request(initial, **{p.UPLOAD_PRECISION: asked}), site_context(site, config))
    sent = p.arrays_to_adapter(reply.content.array_records[p.ARRAYS], source="test")
    expected = dtype if dtype is not None else config.upload_dtype
    assert {v.dtype for v in sent.values()} == {expected}
