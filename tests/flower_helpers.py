"""An in-process Grid that delivers messages straight to fedtune's ClientApp handlers (no Ray, no network).

It lets the server loop, the strategies and the client rounds be tested together, deterministically, in seconds.
Exceptions in a handler become error replies, exactly as Flower reports crashed ClientApps. Like Flower's own Grids,
it sets each request's ``message_id`` in place when it sends it (replies name it in ``reply_to_message_id``), and
like ``fedtune simulate`` it registers every node's site name in the run's identity table (``server.identities``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from flwr.app import Context, Error, Message, MessageType, Metadata, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from client.evaluate import evaluate_round
from client.train import train_round
from common.federation.config import FederationConfig
from common.federation.site import EVALUATE_ALL, SiteSettings

#: Changes a train reply: returns the reply to deliver, several (duplicates), or None (no reply: a timeout).
Tamper = Callable[[int, Message], "Message | Sequence[Message] | None"]
#: A ClientApp's train handler (default: fedtune's ``train_round``).
Handler = Callable[[Message, Context], Message]


class LocalGrid(Grid):
    """Nodes 1..N (or ``node_ids``), each a site with its own Context that persists across rounds (a SuperNode).

    ``names`` is the identity table the operator's side writes (node id -> site name); by default each node is
    registered under its site's ``site_name``; ``names={}`` registers none (nodes are then ``node <id>``).
    ``train`` replaces fedtune's train handler (e.g. stand-in sites that follow the protocol without training).
    """

    def __init__(
        self,
        config: FederationConfig,
        sites: list[SiteSettings],
        tamper: Tamper | None = None,
        *,
        node_ids: Sequence[int] | None = None,
        names: Mapping[int, str] | None = None,
        train: Handler | None = None,
    ) -> None:
        from server.identities import IdentityTable, SiteIdentity

        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
        self.config = config
        nodes = list(node_ids) if node_ids is not None else list(range(1, len(sites) + 1))
        self.sites = dict(zip(nodes, sites, strict=True))
        if names is None:
            names = {node: site.site_name for node, site in self.sites.items()}
        table = IdentityTable(Path(config.out_dir))
        for node, name in names.items():
            table.register(SiteIdentity(node, name, None, "simulation"))
        self.train = train or train_round
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
        replies: list[Message] = []
        for message in messages:
            # What Flower's Grids do in push_messages (inmemory_grid.py): the id is set on the message passed in.
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            node = message.metadata.dst_node_id
            self.delivered.append((node, message.metadata.message_type))
            handler = self.train if message.metadata.message_type == MessageType.TRAIN else evaluate_round
            try:
                reply = handler(message, self.contexts[node])
            except Exception as exc:  # a crashed ClientApp
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=message)
            if self.tamper is not None and message.metadata.message_type == MessageType.TRAIN:
                tampered = self.tamper(node, reply)
                replies.extend([] if tampered is None else [tampered] if isinstance(tampered, Message) else tampered)
            else:
                replies.append(reply)
        return replies


def make_sites(tmp_path: Path, data_files: list[Path], **overrides) -> list[SiteSettings]:
    """One site per data file, each with its own ledger under tmp_path.

    Sites release every held-out metric and are seeded unless ``overrides`` say otherwise (``release_metrics=()``
    for a site that releases none; the older ``evaluate=`` still works).
    """
    if "evaluate" not in overrides:
        overrides.setdefault("release_metrics", EVALUATE_ALL)
    return [
        SiteSettings(
            **{
                "site_name": f"site-{k}",
                "data_path": path,
                "ledger_path": tmp_path / f"ledger-{k}.jsonl",
                "seed": 100 + k,
                **overrides,
            }
        )
        for k, path in enumerate(data_files)
    ]


def replace_arrays(reply: Message, mutate: Callable[[dict], dict]) -> Message:
    """A copy of a train reply whose adapter tensors went through ``mutate``; every other record is kept."""
    from common.federation import protocol as p

    content = reply.content
    tensors = p.arrays_to_adapter(content.array_records[p.ARRAYS], source="test")
    new = RecordDict({**content, p.ARRAYS: p.adapter_to_arrays(mutate(tensors))})
    forged = Message(new, reply_to=_original(reply))
    return forged


def _original(reply: Message) -> Message:
    """A stand-in for the request a reply answers (same node, same message id), to build a modified reply."""
    meta = reply.metadata
    request = Metadata(
        run_id=meta.run_id,
        message_id=meta.reply_to_message_id,
        src_node_id=meta.dst_node_id,
        dst_node_id=meta.src_node_id,
        reply_to_message_id="",
        group_id=meta.group_id,
        created_at=meta.created_at,
        ttl=meta.ttl,
        message_type=meta.message_type,
    )
    return Message(content=RecordDict(), metadata=request)
