"""Replies are matched to the requests they answer: a dead site is one outcome under its own node, never node 1's."""

from __future__ import annotations

import uuid

from flwr.app import ConfigRecord, Error, Message, MessageType, Metadata, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server.replies import match_replies
from tests.server.federation_helpers import superlink_error


def requests(*nodes: int, ids: bool = True) -> list[Message]:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    sent = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN) for node in nodes]
    for message in sent:
        if ids:  # what a Grid's push_messages does
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
    return sent


def answer(request: Message, value: int = 0) -> Message:
    return Message(RecordDict({"status": ConfigRecord({"v": value})}), reply_to=request)


def sent_by(sender: int, request: Message, content: RecordDict) -> Message:
    """A reply to ``request`` that ``sender`` sent (whoever it was addressed to)."""
    meta = request.metadata
    metadata = Metadata(
        run_id=meta.run_id,
        message_id="",
        src_node_id=sender,
        dst_node_id=0,
        reply_to_message_id=meta.message_id,
        group_id="",
        created_at=meta.created_at,
        ttl=meta.ttl,
        message_type=meta.message_type,
    )
    return Message(content=content, metadata=metadata)


def test_each_request_gets_its_reply_and_the_silent_ones_are_unanswered():
    sent = requests(5, 6, 7)
    matched = match_replies(sent, [answer(sent[2]), answer(sent[0])])
    assert [node for node, _ in matched.answered] == [7, 5] and matched.unanswered == (6,)


def test_a_superlink_error_counts_for_the_node_whose_request_it_answers():
    sent = requests(5, 6)
    matched = match_replies(sent, [answer(sent[0]), superlink_error(answer(sent[1]))])
    assert dict(matched.answered)[6].has_error() and matched.unanswered == ()
    assert 1 not in dict(matched.answered)


def test_duplicates_strangers_and_impostors_are_ignored():
    sent = requests(5, 6)
    other_round = requests(5)[0]
    impostor = sent_by(9, sent[1], RecordDict())  # node 9 answers node 6's request
    content_from_superlink = sent_by(1, sent[1], RecordDict())  # only the SuperLink's ERRORS stand for a node
    replies = [answer(sent[0], 1), answer(sent[0], 2), answer(other_round), impostor, content_from_superlink]
    matched = match_replies(sent, replies)
    assert [node for node, _ in matched.answered] == [5] and matched.unanswered == (6,)
    assert dict(matched.answered)[5].content["status"]["v"] == 1  # the first reply counts


def test_requests_without_ids_are_matched_by_node():
    sent = requests(5, 6, ids=False)
    matched = match_replies(sent, [answer(sent[1]), Message(Error(code=0, reason="x"), reply_to=sent[0])])
    assert sorted(node for node, _ in matched.answered) == [5, 6]
