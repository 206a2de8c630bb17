"""The common machinery of fedtune's strategies: budget-aware sampling, refusals, validation, bookkeeping.

Subclasses only say which tensors travel (``select_exchanged``) and how accepted updates combine (``combine``).

Two faces, one implementation: fedtune's round loop (:mod:`server.federation`) calls the typed methods
(:meth:`AdapterStrategy.sample`, :meth:`AdapterStrategy.train_messages`, :meth:`AdapterStrategy.aggregate_round`,
:meth:`AdapterStrategy.state`/:meth:`AdapterStrategy.restore`); Flower's ``Strategy`` interface
(``configure_train``/``aggregate_train``) is kept on top of them for anyone driving the strategy with
``Strategy.start``.
"""

from __future__ import annotations

import logging
import random
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import Tensor

from common.errors import FederationError
from common.federation import protocol as p
from common.federation.rounds import SiteResult, Status
from common.polling import WaitTimeout, wait_until
from server.inspection import inspect_train_reply

log = logging.getLogger(__name__)

#: Adapter tensors by name (a global adapter, or one site's update).
Tensors = Mapping[str, Tensor]


@dataclass
class StrategyState:
    """What a strategy carries from round to round (and a checkpoint must restore): sampling RNG, excluded sites."""

    rng_state: tuple[Any, ...]
    excluded: dict[int, str] = field(default_factory=dict)  # node id -> why it is never sampled again

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (the RNG state as Python's ``random`` gives it, tuples as lists)."""
        version, internal, gauss = self.rng_state
        return {
            "rng_state": [version, list(internal), gauss],
            "excluded": {str(k): v for k, v in self.excluded.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StrategyState:
        """Inverse of :meth:`to_json`."""
        version, internal, gauss = data["rng_state"]
        return cls(
            rng_state=(version, tuple(internal), gauss),
            excluded={int(k): str(v) for k, v in data.get("excluded", {}).items()},
        )


@dataclass(frozen=True)
class RoundOutcome:
    """The result of aggregating one round: the new global adapter (None if too few valid updates) and the sites."""

    adapter: dict[str, torch.Tensor] | None
    sites: tuple[SiteResult, ...]
    train_metrics: dict[str, float] | None = None


class AdapterStrategy(FedAvg):
    """FedAvg's message flow over LoRA adapters, with fedtune's rules.

    * Sites that refused (budget exhausted) are never sampled again; when fewer than ``min_sites`` eligible sites
      remain, :meth:`sample` returns nothing and says why.
    * Every trained reply is inspected (:func:`server.inspection.inspect_train_reply`); rejected and crashed replies
      are logged with the node and reason and left out, as if they never came.
    * If fewer than ``min_sites`` valid updates remain, the round does not aggregate.
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
        self._rng = random.Random(seed)
        self._excluded: dict[int, str] = {}
        self._global: dict[str, torch.Tensor] = {}
        self._sampled: tuple[int, ...] = ()

    # ------------------------------------------------------------------ what subclasses decide
    def select_exchanged(self, global_keys: Sequence[str], trainable: frozenset[str]) -> list[str]:
        """The tensors sites send back (default: every trainable tensor)."""
        return [k for k in global_keys if k in trainable]

    @abstractmethod
    def combine(self, current: Tensors, updates: Sequence[Tensors], weights: Sequence[float]) -> dict[str, Tensor]:
        """The new global adapter (all keys) from the accepted updates (exchanged keys) and their weights."""

    # ------------------------------------------------------------------ state for checkpoints
    def state(self) -> StrategyState:
        """A snapshot of everything that carries over between rounds."""
        return StrategyState(rng_state=self._rng.getstate(), excluded=dict(self._excluded))

    def restore(self, state: StrategyState) -> None:
        """Continue from ``state`` (a resumed run samples exactly as the uninterrupted one would)."""
        self._rng.setstate(state.rng_state)
        self._excluded = dict(state.excluded)

    # ------------------------------------------------------------------ fedtune's round loop
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

    def eligible(self, nodes: Iterable[int]) -> list[int]:
        """Those of ``nodes`` that have not refused or been excluded."""
        return sorted(n for n in nodes if n not in self._excluded)

    def sample(self, grid: Grid) -> tuple[tuple[int, ...], str | None]:
        """The sites of the next round, or none and the reason the run cannot go on."""
        nodes = self._wait_for_nodes(grid)
        eligible = self.eligible(nodes)
        if len(eligible) < self.min_sites:
            reason = (
                f"only {len(eligible)} of {len(nodes)} sites can still train (at least {self.min_sites} needed); "
                f"{len(self._excluded)} refused or were excluded"
            )
            return (), reason
        count = len(eligible) if not self.sites_per_round else min(self.sites_per_round, len(eligible))
        return tuple(sorted(self._rng.sample(eligible, count))), None

    def train_messages(
        self, sampled: Sequence[int], global_state: Mapping[str, torch.Tensor], config: ConfigRecord
    ) -> list[Message]:
        """The train requests to ``sampled``: the global adapter and ``config``."""
        self._global = dict(global_state)
        self._sampled = tuple(sampled)
        arrays = p.adapter_to_arrays(global_state, self.global_keys)
        record = RecordDict({p.ARRAYS: arrays, p.CONFIG: config})
        return list(self._construct_messages(record, list(sampled), MessageType.TRAIN))

    def aggregate_round(self, replies: Iterable[Message]) -> RoundOutcome:
        """Inspect every reply, exclude refusing sites, and combine the accepted updates."""
        # Updates arrive in the upload dtype; they are validated against the global in that dtype, then combined
        # in the global's own precision.
        reference = {k: self._global[k].to(self.upload_dtype) for k in self.exchanged_keys}
        dtypes = {k: self._global[k].dtype for k in self.exchanged_keys}
        sites: list[SiteResult] = []
        accepted: list[dict[str, torch.Tensor]] = []
        weights: list[float] = []
        losses: list[float] = []
        for reply in replies:
            inspected = inspect_train_reply(
                reply, reference, global_dtypes=dtypes, max_update_norm=self.max_update_norm
            )
            sites.append(inspected.result)
            if inspected.result.status is Status.REFUSED:
                self._excluded[inspected.result.node_id] = inspected.result.reason
            if inspected.update is not None:
                accepted.append(inspected.update)
                weights.append(inspected.weight)
                losses.append(inspected.result.metrics.get(p.TRAIN_LOSS, 0.0))
        answered = {site.node_id for site in sites}
        for node in self._sampled:
            if node not in answered:
                sites.append(SiteResult(node, f"node {node}", Status.CRASHED, "no reply before the round timeout"))
        if len(accepted) < self.min_sites:
            return RoundOutcome(adapter=None, sites=tuple(sites))
        combined = self.combine(self._global, accepted, weights)
        metrics = {
            "sites-trained": float(len(accepted)),
            p.TRAIN_LOSS: sum(w * loss for w, loss in zip(weights, losses, strict=True)) / sum(weights),
            p.NUM_EXAMPLES: float(sum(weights)),
        }
        return RoundOutcome(adapter=combined, sites=tuple(sites), train_metrics=metrics)

    # ------------------------------------------------------------------ Flower's strategy interface
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample sites that still have budget and send them the global adapter."""
        sampled, reason = self.sample(grid)
        if reason is not None:
            log.warning("round %d: %s", server_round, reason)
            return []
        config[p.SERVER_ROUND] = server_round
        return self.train_messages(sampled, p.arrays_to_adapter(arrays, source="global adapter"), config)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's form of :meth:`aggregate_round`."""
        outcome = self.aggregate_round(replies)
        if outcome.adapter is None:
            return None, None
        metrics: dict[str, int | float | list[int] | list[float]] = dict(outcome.train_metrics or {})
        return p.adapter_to_arrays(outcome.adapter, self.global_keys), MetricRecord(metrics)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask every connected site (those that opted in answer with metrics)."""
        if self.fraction_evaluate == 0.0:
            return []
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
        connected: list[int] = []

        def enough() -> list[int] | None:
            connected[:] = grid.get_node_ids()
            return list(connected) if len(connected) >= self.min_sites else None

        try:
            return wait_until(enough, timeout=self.wait_for_sites, interval=1.0)
        except WaitTimeout:
            raise FederationError(
                f"only {len(connected)} site(s) connected after {self.wait_for_sites:g} s; "
                f"at least {self.min_sites} needed"
            ) from None
