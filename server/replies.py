"""Match each reply to the request it answers, so that every sampled site gets exactly one outcome.

A reply is attributed by the request it answers (``reply_to_message_id``), never by its sender alone: when a
SuperNode dies, the SuperLink itself answers the request with an error whose sender is the SuperLink
(``SUPERLINK_NODE_ID`` = 1, flwr ``linkstate/utils.py``). Attributed by sender, a killed site would count twice (an
error from "node 1" and a timeout under its own id). Flower's Grids set each request's ``metadata.message_id`` in
``push_messages``, on the message objects passed to ``send_and_receive`` (``inmemory_grid.py``, ``http_grid.py``),
so after the call the requests carry the ids their replies name.

Rules: a reply to a request of this round is that request's node's outcome if it comes from that node, or is an
error from the SuperLink; the first such reply counts. Duplicates, replies to no request of this round and replies
from another node are ignored with a log line. A request without an id (a Grid that sets none) is matched by its
node instead. Requests left unanswered are the caller's timeouts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from flwr.app import Message
from flwr.common.constant import SUPERLINK_NODE_ID

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MatchedReplies:
    """Each answered node's reply, in reply order, and the nodes whose requests got none."""

    answered: tuple[tuple[int, Message], ...]
    unanswered: tuple[int, ...]


def match_replies(requests: Sequence[Message], replies: Iterable[Message]) -> MatchedReplies:
    """Pair ``replies`` with the ``requests`` they answer (see the module's rules); never raises on a reply."""
    by_id = {r.metadata.message_id: r.metadata.dst_node_id for r in requests if r.metadata.message_id}
    without_id = {r.metadata.dst_node_id for r in requests if not r.metadata.message_id}
    answered: dict[int, Message] = {}
    for reply in replies:
        try:
            node = _request_node(reply, by_id, without_id)
        except Exception as exc:  # a reply whose metadata cannot even be read
            log.warning("ignored a reply with unreadable metadata (%s)", type(exc).__name__)
            continue
        if node is None:
            continue
        if node in answered:
            log.warning("ignored a duplicate reply for node %d", node)
            continue
        answered[node] = reply
    requested = [r.metadata.dst_node_id for r in requests]
    return MatchedReplies(tuple(answered.items()), tuple(n for n in requested if n not in answered))


def _request_node(reply: Message, by_id: dict[str, int], without_id: set[int]) -> int | None:
    """The node whose request ``reply`` answers, or None (logged) if it answers none of them."""
    sender = reply.metadata.src_node_id
    request_id = reply.metadata.reply_to_message_id
    if request_id and request_id in by_id:
        node = by_id[request_id]
        if sender == node or (sender == SUPERLINK_NODE_ID and reply.has_error()):
            return node
        log.warning("ignored a reply to node %d's request sent by node %d", node, sender)
        return None
    if sender in without_id:
        return sender
    log.warning("ignored a reply from node %d that answers no request of this round", sender)
    return None
