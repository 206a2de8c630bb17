"""The common machinery of fedtune's strategies: budget-aware sampling, reply matching, admission, bookkeeping.

Subclasses only say which tensors travel (``select_exchanged``) and how accepted updates combine (``combine``). Any
strategy may be given a server optimiser (:mod:`server.optimizers`: post-processing of DP updates, no privacy cost).

Two faces, one implementation: fedtune's round loop (:mod:`server.federation`) calls the typed methods
(:meth:`AdapterStrategy.sample`, :meth:`AdapterStrategy.train_messages`, :meth:`AdapterStrategy.aggregate_round`,
:meth:`AdapterStrategy.state`/:meth:`AdapterStrategy.restore`); Flower's ``Strategy`` interface
(``configure_train``/``aggregate_train``) is kept on top of them for anyone driving the strategy with
``Strategy.start``.

A round, as the strategy sees it: each reply is matched to the request it answers (:mod:`server.replies`), so the
site is its request's node under its authenticated identity (:mod:`server.identities`); inspected on its own
(:mod:`server.inspection`); then judged against the run's memory (:mod:`server.strategies.admission`: exclusions,
witnessed ledger heads, constant N) and against the round's other updates (the weight share). Nothing a reply
contains raises out of :meth:`AdapterStrategy.aggregate_round`.
"""

from __future__ import annotations

import logging
import random
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import Tensor

from common.errors import FederationError
from common.federation import protocol as p
from common.federation.config import Weighting
from common.federation.rounds import SiteResult, Status
from common.polling import WaitTimeout, wait_until
from server.identities import Identities, IdentityTable
from server.inspection import InspectedReply, inspect_train_reply
from server.optimizers import ServerOptimizer
from server.replies import match_replies
from server.strategies.admission import admit, largest_share, over_share, reject_for_share
from server.strategies.evaluation import combine_evaluations, read_evaluation
from server.strategies.state import StrategyState
from server.validation import round_upload_dtype
from server.witness import witness_request

log = logging.getLogger(__name__)

#: Adapter tensors by name (a global adapter, or one site's update).
Tensors = Mapping[str, Tensor]
PRECISION_NAMES = {torch.float16: "float16", torch.float32: "float32"}

__all__ = ["AdapterStrategy", "RoundOutcome", "SiteResult", "StrategyState", "Tensors"]


@dataclass(frozen=True)
class RoundOutcome:
    """The result of aggregating one round: the new global adapter (None if too few valid updates) and the sites."""

    adapter: dict[str, torch.Tensor] | None
    sites: tuple[SiteResult, ...]
    train_metrics: dict[str, float] | None = None
    upload_precision: str | None = None


class AdapterStrategy(FedAvg):
    """FedAvg's message flow over LoRA adapters, with fedtune's rules.

    * Sites that refused or were excluded are never sampled again; when fewer than ``min_sites`` eligible sites
      remain, :meth:`sample` returns nothing and says why.
    * Every reply is inspected and admitted (module docstring); rejected and crashed replies are logged with the
      site and the reason and left out, as if they never came.
    * Accepted updates are weighted by ``num-examples`` (``weighting="examples"``) or equally (``"uniform"``); none
      may hold more than ``max_site_weight`` of the round's weight. With fewer than ``min_sites`` valid updates the
      round does not aggregate.
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
        max_site_weight: float = 0.5,
        weighting: Weighting = "examples",
        identities: IdentityTable | None = None,
        server_optimizer: ServerOptimizer | None = None,
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
        self.max_site_weight = max_site_weight
        self.weighting: Weighting = weighting
        self.identities = identities
        self.server_optimizer = server_optimizer  # None: the combined adapter is the new global (FedAvg's step)
        self._rng = random.Random(seed)
        self._state = StrategyState(rng_state=self._rng.getstate())
        self._global: dict[str, torch.Tensor] = {}
        self._round_dtype = upload_dtype
        self._requests: list[Message] = []
        self._eval_requests: list[Message] = []

    # ------------------------------------------------------------------ what subclasses decide
    def select_exchanged(self, global_keys: Sequence[str], trainable: frozenset[str]) -> list[str]:
        """The tensors sites send back (default: every trainable tensor)."""
        return [k for k in global_keys if k in trainable]

    @abstractmethod
    def combine(self, current: Tensors, updates: Sequence[Tensors], weights: Sequence[float]) -> dict[str, Tensor]:
        """The new global adapter (all keys) from the accepted updates (exchanged keys) and their weights."""

    def optimised(self, adapter: Tensors) -> dict[str, Tensor]:
        """What the server optimiser steps: the exchanged tensors (FFA's frozen A never enter it, so never drift)."""
        return {key: adapter[key] for key in self.exchanged_keys}

    def aggregate(self, current: Tensors, updates: Sequence[Tensors], weights: Sequence[float]) -> dict[str, Tensor]:
        """The round's aggregate in the :meth:`optimised` space (the point plain aggregation would move to)."""
        return self.optimised(self.combine(current, updates, weights))

    def adapter_from(self, current: Tensors, optimised: Tensors) -> dict[str, Tensor]:
        """The global adapter whose :meth:`optimised` view is ``optimised`` (default: those tensors replaced)."""
        return {**current, **optimised}

    # ------------------------------------------------------------------ state for checkpoints
    def state(self) -> StrategyState:
        """A snapshot of everything that carries over between rounds."""
        return StrategyState(
            rng_state=self._rng.getstate(),
            excluded=dict(self._state.excluded),
            witnesses=dict(self._state.witnesses),
            examples=dict(self._state.examples),
            optimizer=self.server_optimizer.state() if self.server_optimizer is not None else None,
        )

    def restore(self, state: StrategyState) -> None:
        """Continue from ``state`` (a resumed run samples and witnesses exactly as the uninterrupted one would)."""
        self._rng.setstate(state.rng_state)
        self._state = StrategyState(
            rng_state=state.rng_state,
            excluded=dict(state.excluded),
            witnesses=dict(state.witnesses),
            examples=dict(state.examples),
        )
        if self.server_optimizer is not None:
            self.server_optimizer.restore(state.optimizer)

    # ------------------------------------------------------------------ fedtune's round loop
    def summary(self) -> None:
        """Log the configuration."""
        log.info(
            "strategy %s: %d of %d adapter tensors exchanged, min sites %d, sites per round %s, max update norm %g, "
            "weighting %s, max site weight %g",
            self.name,
            len(self.exchanged_keys),
            len(self.global_keys),
            self.min_sites,
            self.sites_per_round or "all",
            self.max_update_norm,
            self.weighting,
            self.max_site_weight,
        )

    def known_sites(self) -> Identities:
        """The run's identity table as it stands (empty without one: every node is ``node <id>``)."""
        return self.identities.read() if self.identities is not None else Identities()

    def eligible(self, nodes: Iterable[int]) -> list[int]:
        """Those of ``nodes`` whose site has not refused or been excluded."""
        known = self.known_sites()
        return sorted(n for n in nodes if known.of(n).name not in self._state.excluded)

    def sample(self, grid: Grid) -> tuple[tuple[int, ...], str | None]:
        """The sites of the next round, or none and the reason the run cannot go on."""
        nodes = self._wait_for_nodes(grid)
        eligible = self.eligible(nodes)
        if len(eligible) < self.min_sites:
            reason = (
                f"only {len(eligible)} of {len(nodes)} sites can still train (at least {self.min_sites} needed); "
                f"{len(self._state.excluded)} refused or were excluded"
            )
            return (), reason
        count = len(eligible) if not self.sites_per_round else min(self.sites_per_round, len(eligible))
        return tuple(sorted(self._rng.sample(eligible, count))), None

    def train_messages(
        self, sampled: Sequence[int], global_state: Mapping[str, torch.Tensor], config: ConfigRecord
    ) -> list[Message]:
        """The train requests to ``sampled``: the global adapter, ``config`` and this round's upload precision.

        A site whose ledger head the server witnessed also gets that head (the one its next head must extend).
        """
        self._global = dict(global_state)
        self._round_dtype = round_upload_dtype(
            global_state, self.exchanged_keys, configured=self.upload_dtype, max_update_norm=self.max_update_norm
        )
        if self._round_dtype != self.upload_dtype:
            log.warning("the global adapter does not fit float16 with its update bound: this round uploads float32")
        arrays = p.adapter_to_arrays(global_state, self.global_keys)
        known = self.known_sites()
        self._requests = []
        for node in sampled:
            request = ConfigRecord({**config, p.UPLOAD_PRECISION: PRECISION_NAMES[self._round_dtype]})
            witnessed = self._state.witnesses.get(known.of(node).name)
            if witnessed is not None:
                request.update(witness_request(witnessed))
            content = RecordDict({p.ARRAYS: arrays, p.CONFIG: request})
            self._requests.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        return list(self._requests)

    def aggregate_round(self, replies: Iterable[Message]) -> RoundOutcome:
        """Match, inspect and admit every reply; combine the accepted updates whose weight share is within the cap."""
        # Updates arrive in the round's upload dtype; they are validated against the global in that dtype, then
        # combined in the global's own precision.
        reference = {k: self._global[k].to(self._round_dtype) for k in self.exchanged_keys}
        dtypes = {k: self._global[k].dtype for k in self.exchanged_keys}
        known = self.known_sites()
        matched = match_replies(self._requests, replies)
        verdicts: list[InspectedReply] = []
        for node, reply in matched.answered:
            site = known.of(node)
            inspected = inspect_train_reply(
                reply, site, reference, global_dtypes=dtypes, max_update_norm=self.max_update_norm
            )
            verdicts.append(admit(self._state, inspected, site))
        for node in matched.unanswered:
            site = known.of(node)
            reason = "no reply before the round timeout"
            log.error("%s crashed: %s", site.label, reason)
            verdicts.append(
                InspectedReply(
                    SiteResult(node, site.name, Status.CRASHED, reason, key_fingerprint=site.key_fingerprint)
                )
            )
        verdicts = self._apply_share_rule(verdicts, known)
        sites = tuple(v.result for v in verdicts)
        precision = PRECISION_NAMES[self._round_dtype]
        accepted = [v for v in verdicts if v.update is not None]
        weights = {v.result.site_name: self._weight(v) for v in accepted}
        if len(accepted) < self.min_sites or largest_share(weights) > self.max_site_weight * (1 + 1e-9):
            return RoundOutcome(adapter=None, sites=sites, upload_precision=precision)
        updates = [v.update for v in accepted if v.update is not None]
        shares = [weights[v.result.site_name] for v in accepted]
        if self.server_optimizer is None:
            combined = self.combine(self._global, updates, shares)
        else:  # FedOpt: the aggregate minus the current global is a pseudo-gradient
            target = self.aggregate(self._global, updates, shares)
            combined = self.adapter_from(self._global, self.server_optimizer.step(self.optimised(self._global), target))
        metrics = {
            "sites-trained": float(len(accepted)),
            p.NUM_EXAMPLES: float(sum(v.num_examples for v in accepted)),
        }
        return RoundOutcome(adapter=combined, sites=sites, train_metrics=metrics, upload_precision=precision)

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
        """Ask every connected site not excluded (those that opted in answer with metrics)."""
        if self.fraction_evaluate == 0.0:
            return []
        config[p.SERVER_ROUND] = server_round
        record = RecordDict({p.ARRAYS: arrays, p.CONFIG: config})
        nodes = self.eligible(grid.get_node_ids())
        self._eval_requests = list(self._construct_messages(record, nodes, MessageType.EVALUATE))
        return list(self._eval_requests)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The weighted mean of the metrics sites released (opted-out sites send none; malformed replies count not)."""
        known = self.known_sites()
        matched = match_replies(self._eval_requests, replies)
        evaluations = [read_evaluation(reply, known.of(node)) for node, reply in matched.answered]
        combined = combine_evaluations([e for e in evaluations if e is not None], self.weighting)
        return MetricRecord(combined) if combined is not None else None  # type: ignore[arg-type]

    # ------------------------------------------------------------------ internals
    def _weight(self, inspected: InspectedReply) -> float:
        return float(inspected.num_examples) if self.weighting == "examples" else 1.0

    def _apply_share_rule(self, verdicts: list[InspectedReply], known: Identities) -> list[InspectedReply]:
        """Reject (and exclude) every update above the weight share cap (rule 4 of :mod:`.admission`)."""
        weights = {v.result.site_name: self._weight(v) for v in verdicts if v.update is not None}
        rejected = over_share(weights, self.max_site_weight)
        return [
            reject_for_share(
                self._state, v, known.of(v.result.node_id), rejected[v.result.site_name], self.max_site_weight
            )
            if v.update is not None and v.result.site_name in rejected
            else v
            for v in verdicts
        ]

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
