"""A failing site tells the server THAT it failed, never why: the reason names its files, labels and values."""

from __future__ import annotations

import pytest
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import FAILURE, SiteFailure, contained, error_log
from common.errors import DataValidationError


def test_a_sites_exception_is_logged_at_the_site_and_replaced_by_a_fixed_line(tmp_path):
    secret = "patients-of-dr-x.jsonl:17: label 'HIV+' is outside the label set"

    def failing(message: Message, context: Context) -> Message:
        raise DataValidationError(secret)  # what Flower would have sent the server, verbatim

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    message = Message(content=RecordDict(), message_type=MessageType.TRAIN, dst_node_id=1)
    node_config = {"data-path": str(tmp_path / "d.jsonl"), "ledger-path": str(tmp_path / "ledger.jsonl")}
    context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})
    with pytest.raises(SiteFailure) as failure:
        contained(failing)(message, context)
    assert str(failure.value) == FAILURE and "HIV" not in repr(failure.value)
    assert failure.value.__cause__ is None and failure.value.__suppress_context__  # no chained detail either
    log = error_log(node_config)
    assert log is not None and secret in log.read_text()  # the detail stays at the site


def test_a_site_without_a_ledger_path_still_contains_its_failure():
    def failing(message: Message, context: Context) -> Message:
        raise RuntimeError("/secret/path")

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    message = Message(content=RecordDict(), message_type=MessageType.EVALUATE, dst_node_id=1)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(SiteFailure, match="the reason is in the site's own log"):
        contained(failing)(message, context)
