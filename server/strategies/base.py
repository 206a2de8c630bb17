"""The common machinery of fedtune's strategies: budget-aware sampling, refusals, validation, bookkeeping.

Subclasses only say which tensors travel (``exchanged_keys``) and how accepted updates combine (``combine``).
"""

from __future__ import annotations

import logging
import random
import time
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common.errors import FederationError, UpdateRejectedError
from common.federation import protocol as p
from common.federation.rounds import Status
from server.validation import validate_update

log = logging.getLogger(__name__)


@dataclass
class SiteResult:
    """What one site did in one round, as the server saw it."""

    node_id: int
    site_name: str
    status: str  # trained | refused | rejected | crashed
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    update_norm: float | None = None
    upload_bytes: int = 0


@dataclass
class RoundReport:
    """Everything that happened in one training round."""

    server_round: int
    sampled: list[int]
    sites: list[SiteResult] = field(default_factory=list)

    def with_status(self, status: str) -> list[SiteResult]:
        """Sites of one status."""
        return [s for s in self.sites if s.status == status]


def crash_reason(text: str) -> str:
    """The useful line of a remote traceback: the last exception message (Flower wraps it several times)."""
    marker = "Message:"
    if marker in text:
        text = text.rsplit(marker, 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "unknown error"
    return last.strip("'>)").strip()


class AdapterStrategy(FedAvg):
    """FedAvg's message flow over LoRA adapters, with fedtune's rules.

    * Sites that refused (budget exhausted) are never sampled again; when fewer than ``min_sites`` eligible sites
      remain, ``configure_train`` returns no messages and sets ``stop_reason``.
    * Every trained reply is validated (:func:`server.validation.validate_update`); rejected and crashed replies
      are logged with the node and reason and left out, as if they never came.
    * If fewer than ``min_sites`` valid updates remain, the round does not aggregate (``aggregate_train`` returns
      no arrays) and ``last_round`` says why.
    """

    name = "base"

    def __init__(
        self,
        *,
        global_keys: Sequence[str],
        trainable_keys: Iterable[str],
        min_sites: int,
        sites_per_round: int,
        max_update_norm: float,
        seed: int,
        federated_evaluation: bool,
        upload_dtype: torch.dtype = torch.float32,
        wait_for_sites: float = 600.0,
    ) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=1.0 if federated_evaluation else 0.0,
            min_train_nodes=min_sites,
            min_evaluate_nodes=1,
            min_available_nodes=min_sites,
            weighted_by_key=p.NUM_EXAMPLES,
            arrayrecord_key=p.ARRAYS,
            configrecord_key=p.CONFIG,
        )
        self.global_keys = list(global_keys)
        self.exchanged_keys = self.select_exchanged(self.global_keys, frozenset(trainable_keys))
        self.min_sites = min_sites
        self.sites_per_round = sites_per_round
        self.max_update_norm = max_update_norm
        self.wait_for_sites = wait_for_sites
        self.upload_dtype = upload_dtype
        self.rng = random.Random(seed)
        self.excluded: dict[int, str] = {}  # node id -> why it is never sampled again
        self.stop_reason: str | None = None
        self.last_round: RoundReport | None = None
        self._global: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ what subclasses decide
    def select_exchanged(self, global_keys: Sequence[str], trainable: frozenset[str]) -> list[str]:
        """The tensors sites send back (default: every trainable tensor)."""
        return [k for k in global_keys if k in trainable]

    @abstractmethod
    def combine(
        self,
        current: Mapping[str, torch.Tensor],
        updates: Sequence[Mapping[str, torch.Tensor]],
        weights: Sequence[float],
    ) -> dict[str, torch.Tensor]:
        """The new global adapter (all keys) from the accepted updates (exchanged keys) and their weights."""

    # ------------------------------------------------------------------ Flower's strategy interface
    def summary(self) -> None:
        """Log the configuration."""
        log.info(
            "strategy %s: %d of %d adapter tensors exchanged, min sites %d, sites per round %s, max update norm %g",
            self.name,
            len(self.exchanged_keys),
            len(self.global_keys),
            self.min_sites,
            self.sites_per_round or "all",
            self.max_update_norm,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample sites that still have budget and send them the global adapter."""
        self._global = p.arrays_to_adapter(arrays, source="global adapter")
        nodes = self._wait_for_nodes(grid)
        eligible = sorted(n for n in nodes if n not in self.excluded)
        if len(eligible) < self.min_sites:
            self.stop_reason = (
                f"only {len(eligible)} of {len(nodes)} sites can still train (at least {self.min_sites} needed); "
                f"{len(self.excluded)} refused or were excluded"
            )
            self.last_round = RoundReport(server_round=server_round, sampled=[])
            return []
        count = len(eligible) if not self.sites_per_round else min(self.sites_per_round, len(eligible))
        sampled = sorted(self.rng.sample(eligible, count))
        self.last_round = RoundReport(server_round=server_round, sampled=sampled)
        config[p.SERVER_ROUND] = server_round
        from flwr.app import MessageType, RecordDict

        record = RecordDict({p.ARRAYS: arrays, p.CONFIG: config})
        return self._construct_messages(record, sampled, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate replies, drop refusals/rejections/crashes, and combine what remains."""
        report = self.last_round or RoundReport(server_round=server_round, sampled=[])
        accepted: list[dict[str, torch.Tensor]] = []
        weights: list[float] = []
        # Updates arrive in the upload dtype; they are validated against the global in that dtype, then combined
        # in the global's own precision.
        reference = {k: self._global[k].to(self.upload_dtype) for k in self.exchanged_keys}
        for reply in replies:
            result = self._inspect(reply, reference)
            report.sites.append(result)
            if result.status == "trained":
                accepted.append(self._update_of(reply))
                weights.append(result.metrics[p.NUM_EXAMPLES])
        answered = {s.node_id for s in report.sites}
        for node in report.sampled:
            if node not in answered:
                report.sites.append(SiteResult(node, f"node {node}", "crashed", "no reply before the round timeout"))
        self.last_round = report
        if len(accepted) < self.min_sites:
            return None, None
        combined = self.combine(self._global, accepted, weights)
        metrics = MetricRecord(
            {
                "sites-trained": len(accepted),
                "train-loss": sum(
                    w * s.metrics.get(p.TRAIN_LOSS, 0.0)
                    for w, s in zip(weights, report.with_status("trained"), strict=True)
                )
                / sum(weights),
                p.NUM_EXAMPLES: int(sum(weights)),
            }
        )
        return p.adapter_to_arrays(combined, self.global_keys), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask every connected site (those that opted in answer with metrics)."""
        if self.fraction_evaluate == 0.0:
            return []
        from flwr.app import MessageType, RecordDict

        config[p.SERVER_ROUND] = server_round
        record = RecordDict({p.ARRAYS: arrays, p.CONFIG: config})
        return self._construct_messages(record, sorted(grid.get_node_ids()), MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Example-weighted mean of the metrics of sites that released them (opted-out sites send none)."""
        contents = []
        for reply in replies:
            if reply.has_error():
                log.warning(
                    "round %d: evaluation failed at node %d: %s",
                    server_round,
                    reply.metadata.src_node_id,
                    reply.error.reason,
                )
                continue
            metrics = reply.content.metric_records.get(p.METRICS)
            examples = metrics.get(p.NUM_EXAMPLES, 0) if metrics is not None else 0
            if isinstance(examples, int | float) and examples > 0:
                contents.append(reply.content)
        if not contents:
            return None
        return self.evaluate_metrics_aggr_fn(contents, p.NUM_EXAMPLES)

    # ------------------------------------------------------------------ internals
    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        deadline = time.monotonic() + self.wait_for_sites
        while len(nodes := list(grid.get_node_ids())) < self.min_sites:
            if time.monotonic() > deadline:
                raise FederationError(
                    f"only {len(nodes)} site(s) connected after {self.wait_for_sites:g} s; "
                    f"at least {self.min_sites} needed"
                )
            time.sleep(1.0)
        return nodes

    def _update_of(self, reply: Message) -> dict[str, torch.Tensor]:
        update = p.arrays_to_adapter(reply.content.array_records[p.ARRAYS], source=f"node {reply.metadata.src_node_id}")
        return {k: v.to(self._global[k].dtype) for k, v in update.items()}

    def _inspect(self, reply: Message, reference: Mapping[str, torch.Tensor]) -> SiteResult:
        node = reply.metadata.src_node_id
        if reply.has_error():
            reason = crash_reason(str(reply.error.reason))
            log.error("node %d crashed: %s", node, reason)
            return SiteResult(node, f"node {node}", "crashed", reason)
        content = reply.content
        status = content.config_records.get(p.STATUS, ConfigRecord())
        name = str(status.get(p.SITE_NAME, f"node {node}"))
        metric_record = content.metric_records.get(p.METRICS, MetricRecord())
        metrics = {k: float(v) for k, v in metric_record.items() if isinstance(v, int | float)}
        state = status.get(p.STATE)
        if state == Status.REFUSED:
            reason = str(status.get(p.REASON, "refused"))
            self.excluded[node] = reason
            log.warning("site %s (node %d) refused: %s; it will not be sampled again", name, node, reason)
            return SiteResult(node, name, "refused", reason, metrics)
        source = f"site {name} (node {node})"
        try:
            if state != Status.TRAINED:
                raise UpdateRejectedError(f"{source}: reply status {state!r} is not {Status.TRAINED!r}")
            if list(content.array_records) != [p.ARRAYS]:
                raise UpdateRejectedError(f"{source}: expected exactly one ArrayRecord named {p.ARRAYS!r}")
            weight = metrics.get(p.NUM_EXAMPLES, 0.0)
            if not weight > 0:
                raise UpdateRejectedError(f"{source}: num-examples must be > 0; got {weight}")
            arrays = content.array_records[p.ARRAYS]
            update = p.arrays_to_adapter(arrays, source=source)
            norm = validate_update(update, reference, max_update_norm=self.max_update_norm, source=source)
        except UpdateRejectedError as exc:
            log.warning("rejected update: %s", exc)
            return SiteResult(node, name, "rejected", str(exc), metrics)
        return SiteResult(node, name, "trained", "", metrics, update_norm=norm, upload_bytes=p.serialized_size(arrays))
