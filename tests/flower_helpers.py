"""An in-process Grid that delivers messages straight to fedtune's ClientApp handlers (no Ray, no network).

It lets the server loop, the strategies and the client rounds be tested together, deterministically, in seconds.
Exceptions in a handler become error replies, exactly as Flower reports crashed ClientApps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from client.evaluate import evaluate_round
from client.train import train_round
from common.federation.config import FederationConfig
from common.federation.site import SiteSettings

Tamper = Callable[[int, Message], Message]


class LocalGrid(Grid):
    """Nodes 1..N, each a site with its own Context that persists across rounds (like a SuperNode)."""

    def __init__(self, config: FederationConfig, sites: list[SiteSettings], tamper: Tamper | None = None) -> None:
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
        self.config = config
        self.sites = {node: site for node, site in enumerate(sites, start=1)}
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config=site.to_node_config(),
                state=RecordDict(),
                run_config=config.to_run_config(),
            )
            for node, site in self.sites.items()
        }
        self.tamper = tamper
        self.delivered: list[tuple[int, str]] = []

    def set_run(self, run):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    @property
    def run(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.sites)

    def push_messages(self, messages):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def pull_messages(self, message_ids):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            self.delivered.append((node, message.metadata.message_type))
            handler = train_round if message.metadata.message_type == MessageType.TRAIN else evaluate_round
            try:
                reply = handler(message, self.contexts[node])
            except Exception as exc:  # a crashed ClientApp
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=message)
            if self.tamper is not None and message.metadata.message_type == MessageType.TRAIN:
                reply = self.tamper(node, reply)
            replies.append(reply)
        return replies


def make_sites(tmp_path: Path, data_files: list[Path], **overrides) -> list[SiteSettings]:
    """One site per data file, each with its own ledger under tmp_path."""
    return [
        SiteSettings(
            site_name=f"site-{k}",
            data_path=path,
            ledger_path=tmp_path / f"ledger-{k}.jsonl",
            evaluate=True,
            seed=100 + k,
            **overrides,
        )
        for k, path in enumerate(data_files)
    ]


def replace_arrays(reply: Message, mutate: Callable[[dict], dict]) -> Message:
    """A copy of a train reply whose adapter tensors went through ``mutate`` (for tampering tests)."""
    from common.federation import protocol as p

    content = reply.content
    tensors = p.arrays_to_adapter(content.array_records[p.ARRAYS], source="test")
    arrays = p.adapter_to_arrays(mutate(tensors))
    new = RecordDict(
        {p.ARRAYS: arrays, p.METRICS: content.metric_records[p.METRICS], p.STATUS: content.config_records[p.STATUS]}
    )
    forged = Message(new, reply_to=_original(reply))
    return forged


def _original(reply: Message) -> Message:
    """A stand-in for the request a reply answers (same node), to build a modified reply."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    return Message(content=RecordDict(), message_type=MessageType.TRAIN, dst_node_id=reply.metadata.src_node_id)
