"""Stand-in sites and reply builders for server tests: sites that follow the wire protocol without training.

A :class:`StandInSite` answers a train request the way a site does (``protocol.train_reply``): its update is the
global adapter plus a fixed step on every exchanged tensor, in the upload precision the request asks for, and its
ledger is a real hash chain (:mod:`common.privacy.chain`) that grows by a reserve and a commit each round, with the
proof that its head extends the head the server witnessed. Tests make one misbehave by tampering with its replies,
or by rolling its ledger back.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flwr.app import Context, Error, Message, Metadata, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID

from common.federation import protocol as p
from common.federation.config import FederationConfig, parse_run_config
from common.federation.rounds import FederationResult, RoundRecord, SiteResult
from common.federation.site import SiteSettings
from common.privacy.chain import GENESIS_HASH, LedgerHead, link
from common.privacy.events import DpSgdEvent
from tests.flower_helpers import Handler, LocalGrid, Tamper, _original


@dataclass
class StandInLedger:
    """A hash chain of random record bodies: seq i is the i-th record; the head is the last one."""

    ledger_id: str = field(default_factory=lambda: secrets.token_hex(8))
    bodies: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)

    def append(self, records: int = 1) -> None:
        for _ in range(records):
            body = hashlib.sha256(secrets.token_bytes(16)).hexdigest()
            self.hashes.append(link(self.hashes[-1] if self.hashes else GENESIS_HASH, body))
            self.bodies.append(body)

    @property
    def head(self) -> LedgerHead:
        return LedgerHead(self.ledger_id, len(self.hashes) - 1, self.hashes[-1])

    def proof_since(self, seq: int | None) -> list[str]:
        """The body digests after ``seq`` (none on first contact)."""
        return [] if seq is None else self.bodies[seq + 1 :]

    def rollback(self, records: int) -> None:
        """An older copy restored: the last ``records`` records are gone."""
        del self.bodies[-records:], self.hashes[-records:]


@dataclass
class StandInSite:
    """A site that follows the protocol and trains nothing: update = global + ``step`` on each exchanged tensor."""

    keys: Sequence[str]
    num_examples: int = 100
    step: float = 0.01
    ledger: StandInLedger = field(default_factory=StandInLedger)
    requests: list[Message] = field(default_factory=list)

    def __call__(self, message: Message, context: Context) -> Message:
        self.requests.append(message)
        request = message.content.config_records[p.CONFIG]
        self.ledger.append(2)  # the round's reserve and commit, before the reply
        witnessed = request.get(p.WITNESSED_SEQ)
        global_state = p.arrays_to_adapter(message.content.array_records[p.ARRAYS], source="test")
        dtype = torch.float16 if request.get(p.UPLOAD_PRECISION) == "float16" else torch.float32
        update = {key: global_state[key].float() + self.step for key in self.keys}
        release = p.TrainRelease(
            num_examples=self.num_examples,
            epsilon_spent=0.5 * len(self.requests),
            epsilon_round=0.5,
            delta=1e-5,
            event=DpSgdEvent(noise_multiplier=1.0, sample_rate=0.1, steps=10, max_grad_norm=1.0),
            head=self.ledger.head,
            proof=self.ledger.proof_since(witnessed if isinstance(witnessed, int) else None),
        )
        return p.train_reply(message, p.adapter_to_arrays(update, dtype=dtype), release)


def exchanged_keys(config: FederationConfig) -> list[str]:
    """The tensors a site sends back under ``config``'s strategy (built from the server's own model)."""
    from server.federation import build_strategy
    from server.model import ServerModel

    model = ServerModel(config)
    return build_strategy(config, model, model.adapter_keys).exchanged_keys


def stand_ins(nodes: Sequence[int], keys: Sequence[str], **settings: object) -> dict[int, StandInSite]:
    """One stand-in site per node, each with its own step (so that each update is told apart)."""
    return {node: StandInSite(keys, step=0.01 * (k + 1), **settings) for k, node in enumerate(nodes)}  # type: ignore[arg-type]


def dispatch(sites: Mapping[int, StandInSite]) -> Handler:
    """A LocalGrid train handler that hands each request to its node's stand-in."""
    return lambda message, context: sites[context.node_id](message, context)


def sent_by(sender: int, reply: Message, *, error: Error | None = None) -> Message:
    """``reply`` (or ``error``) as if ``sender`` had sent it, answering the same request."""
    meta = reply.metadata
    metadata = Metadata(
        run_id=meta.run_id,
        message_id="",
        src_node_id=sender,
        dst_node_id=meta.dst_node_id,
        reply_to_message_id=meta.reply_to_message_id,
        group_id=meta.group_id,
        created_at=meta.created_at,
        ttl=meta.ttl,
        message_type=meta.message_type,
    )
    if error is not None:
        return Message(error=error, metadata=metadata)
    return Message(content=reply.content, metadata=metadata)


def superlink_error(reply: Message) -> Message:
    """What the SuperLink answers for a node that died: an error from node 1 to the same request."""
    return sent_by(SUPERLINK_NODE_ID, reply, error=Error(code=3, reason="Error: Node unavailable"))


def with_content(reply: Message, content: RecordDict) -> Message:
    """A reply to the same request as ``reply``, from the same node, holding ``content``."""
    return Message(content, reply_to=_original(reply))


def with_records(reply: Message, **changes: object) -> Message:
    """``reply`` with records replaced (a value) or removed (None), by record name (``-`` for ``_``)."""
    records = dict(reply.content)
    for name, record in changes.items():
        records.pop(name.replace("_", "-"), None)
        if record is not None:
            records[name.replace("_", "-")] = record
    return with_content(reply, RecordDict(records))  # type: ignore[arg-type]


def run_config(tiny_model_dir: object, out: object, **overrides: object) -> FederationConfig:
    """A small run over the tiny model: fedavg, 3 sites, no evaluation, unless ``overrides`` say otherwise."""
    values = {
        "model": str(tiny_model_dir),
        "labels": "negative,positive",
        "strategy": "fedavg",
        "num-rounds": 1,
        "min-sites": 2,
        "federated-evaluation": False,
        "out-dir": str(out),
        "seed": 3,
    }
    return parse_run_config({**values, **{k.replace("_", "-"): v for k, v in overrides.items()}})


def site_settings(directory: object, count: int, *, name: str | None = None) -> list[SiteSettings]:
    """Site settings for stand-ins (they read no data): ``site-K``, or all called ``name``."""
    base = Path(str(directory))
    return [
        SiteSettings(site_name=name or f"site-{k}", data_path=base / "unused.jsonl", ledger_path=base / f"l{k}.jsonl")
        for k in range(count)
    ]


def federate(
    config: FederationConfig,
    sites: Mapping[int, StandInSite],
    *,
    model: object = None,
    tamper: Tamper | None = None,
    names: Mapping[int, str] | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> FederationResult:
    """Run ``config`` over stand-in ``sites`` (node id -> site) in process (``on_round`` after each checkpoint)."""
    from server.federation import run_federation

    grid = LocalGrid(
        config,
        site_settings(config.out_dir, len(sites)),
        tamper,
        node_ids=list(sites),
        names=names,
        train=dispatch(sites),
    )
    return run_federation(grid, config, model=model, on_round=on_round)  # type: ignore[arg-type]


def final_adapter(config: FederationConfig) -> dict[str, torch.Tensor]:
    """The global adapter of the run's last checkpoint."""
    from server.checkpoint import load_checkpoint
    from server.federation import CHECKPOINT_DIR

    checkpoint = load_checkpoint(Path(config.out_dir) / CHECKPOINT_DIR)
    assert checkpoint is not None
    return checkpoint.adapter


def by_name(result: FederationResult, round_number: int) -> dict[str, SiteResult]:
    """The sites of one round, by name."""
    record = next(r for r in result.history if r.round == round_number)
    return {site.site_name: site for site in record.sites}
