"""The server's round loop: sample, send, validate, aggregate, evaluate, checkpoint, report.

It drives one of fedtune's strategies through Flower's Grid, adding what a production federation needs and
``Strategy.start`` lacks: resume from the last checkpoint, a clean early end when too few sites have budget left, a
clear error when a round has too few valid updates, a round log other processes can follow, a per-round privacy
report of every site's reported spend, and the final adapter in PEFT format.

Per round: the strategy samples eligible sites (never one that refused or was excluded) -> each sampled site gets
the global adapter, the run's identity (``fedtune-run-id``, ``num-rounds``, ``server-round``), the round's upload
precision and its witnessed ledger head -> every reply is matched to its request and inspected (crashed, refused,
rejected or trained; :mod:`server.strategies.base`) -> accepted updates are combined by the strategy and applied by
the server optimiser (:mod:`server.optimizers`) -> the new adapter is evaluated on the server's held-out data (and,
if on, by sites that opted in) and the best round so far tracked (:mod:`server.selection`) -> the round is
checkpointed (with the strategy's memory: exclusions, witnessed heads, each site's N, the optimiser's buffers; and
the best round's adapter) and appended to the round log. The run stops early once ``patience`` rounds have not
improved on the best; its ``adapter/`` is the best round's (the last round's without server-side held-out data).

Sites are named by their authenticated identity, from the run directory's identity table (:mod:`server.identities`).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from flwr.app import ConfigRecord
from flwr.serverapp import Grid

from common.errors import FederationError
from common.federation import protocol as p
from common.federation.config import FederationConfig
from common.federation.rounds import FederationResult, Metrics, RoundRecord, Status
from server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from server.identities import IdentityTable
from server.model import AdapterModel, build_server_model
from server.optimizers import build_server_optimizer
from server.report import write_outputs
from server.round_log import RoundLog
from server.selection import RoundSelector, check_selection, kept_round
from server.strategies import STRATEGIES, AdapterStrategy
from server.strategies.state import StrategyState

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
RoundCallback = Callable[[RoundRecord], None]


def build_strategy(config: FederationConfig, model: AdapterModel, global_keys: list[str]) -> AdapterStrategy:
    """The configured strategy over this model's adapter, naming sites from the run directory's identity table."""
    return STRATEGIES[config.strategy](
        global_keys=global_keys,
        trainable_keys=model.trainable,
        min_sites=config.min_sites,
        sites_per_round=config.sites_per_round,
        max_update_norm=config.max_update_norm,
        seed=config.seed,
        federated_evaluation=config.federated_evaluation,
        upload_dtype=config.upload_dtype,
        wait_for_sites=config.round_timeout,
        max_site_weight=config.max_site_weight,
        weighting=config.weighting,
        identities=IdentityTable(Path(config.out_dir)),
        server_optimizer=build_server_optimizer(config.server_optimizer),
    )


def _start_or_resume(out_dir: Path, config: FederationConfig, model: AdapterModel) -> Checkpoint:
    checkpoint = load_checkpoint(out_dir / CHECKPOINT_DIR)
    if checkpoint is not None:
        if checkpoint.config_fingerprint != config.fingerprint():
            raise FederationError(
                f"{out_dir / CHECKPOINT_DIR}: the checkpoint belongs to a run with different settings; "
                "use a new output directory or the same settings to resume"
            )
        log.info("resuming run %s after round %d", checkpoint.run_id, checkpoint.completed_rounds)
        return checkpoint
    initial = model.initial_state()
    checkpoint = Checkpoint(
        run_id=str(uuid.uuid4()),
        config_fingerprint=config.fingerprint(),
        completed_rounds=0,
        adapter=initial,
        strategy=StrategyState(rng_state=random.Random(config.seed).getstate()),
    )
    if model.can_evaluate:
        checkpoint.history.append(RoundRecord(round=0, server_eval=model.evaluate(initial)))
    return checkpoint


def run_federation(
    grid: Grid,
    config: FederationConfig,
    *,
    model: AdapterModel | None = None,
    on_round: RoundCallback | None = None,
) -> FederationResult:
    """Run (or resume) the federation described by ``config``; write everything under ``config.out_dir``."""
    check_selection(config)  # a settings error, before any model is loaded or round runs
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model or build_server_model(config)
    checkpoint = _start_or_resume(out_dir, config, model)
    strategy = build_strategy(config, model, model.adapter_keys)
    strategy.summary()
    log.info(
        "server optimiser %s (server-lr %g); the kept adapter: the best round by the server's %s (patience %d)",
        config.server_optimizer.name,
        config.server_optimizer.learning_rate,
        config.selection.metric,
        config.selection.patience,
    )
    strategy.restore(checkpoint.strategy)
    round_log = RoundLog(out_dir)
    state = checkpoint.adapter
    selector = RoundSelector(config.selection, checkpoint.selection)

    stop_reason: str | None = None
    for server_round in range(checkpoint.completed_rounds + 1, config.num_rounds + 1):
        stop_reason = selector.stop_reason(checkpoint.completed_rounds)  # checked first: a resumed run stops too
        if stop_reason is not None:
            log.warning(stop_reason)
            break
        started = time.perf_counter()
        sampled, stop_reason = strategy.sample(grid)
        if stop_reason is not None:
            stop_reason = f"stopped before round {server_round}: {stop_reason}"
            log.warning(stop_reason)
            break
        request = ConfigRecord(
            {p.RUN_ID: checkpoint.run_id, p.NUM_ROUNDS: config.num_rounds, p.SERVER_ROUND: server_round}
        )
        replies = grid.send_and_receive(strategy.train_messages(sampled, state, request), timeout=config.round_timeout)
        outcome = strategy.aggregate_round(replies)
        if outcome.adapter is None:
            trained = len([s for s in outcome.sites if s.status is Status.TRAINED])
            eligible = strategy.eligible(grid.get_node_ids())
            if len(eligible) >= config.min_sites:
                problems = "; ".join(
                    f"{s.site_name}: {s.status} ({s.reason})" for s in outcome.sites if s.status is not Status.TRAINED
                )
                raise FederationError(
                    f"round {server_round}: only {trained} valid update(s), at least {config.min_sites} needed "
                    f"({problems or 'no replies'})"
                )
            # Sites ran out of budget (or were excluded): a normal end, not a failure (this round's few updates are
            # discarded).
            stop_reason = (
                f"stopped in round {server_round}: only {len(eligible)} site(s) still have budget and are not "
                f"excluded (at least {config.min_sites} needed); {trained} update(s) discarded"
            )
            log.warning(stop_reason)
            checkpoint.history.append(
                RoundRecord(
                    round=server_round,
                    sampled=sampled,
                    sites=outcome.sites,
                    aggregated=False,
                    upload_precision=outcome.upload_precision,
                )
            )
            break
        state = outcome.adapter
        record = RoundRecord(
            round=server_round,
            sampled=sampled,
            sites=outcome.sites,
            train=outcome.train_metrics,
            server_eval=model.evaluate(state),
            federated_eval=_federated_evaluation(strategy, grid, server_round, state, config),
            seconds=round(time.perf_counter() - started, 3),
            upload_precision=outcome.upload_precision,
        )
        selector.observe(server_round, record.server_eval, state)
        checkpoint.history.append(record)
        checkpoint.completed_rounds = server_round
        checkpoint.adapter = state
        checkpoint.strategy = strategy.state()
        checkpoint.selection = selector.state
        save_checkpoint(out_dir / CHECKPOINT_DIR, checkpoint)
        round_log.append(record)
        if on_round is not None:
            on_round(record)

    selected, kept = kept_round(selector, checkpoint.completed_rounds, state, evaluated=model.can_evaluate)
    log.info("kept the adapter of round %d: %s", selected.round, selected.reason)
    result = FederationResult(
        run_id=checkpoint.run_id,
        out_dir=out_dir,
        completed_rounds=checkpoint.completed_rounds,
        planned_rounds=config.num_rounds,
        stop_reason=stop_reason,
        history=tuple(checkpoint.history),
        selected=selected,
    )
    model.save(kept, out_dir / "adapter")
    write_outputs(out_dir, config, result, identities=strategy.known_sites())
    return result


def _federated_evaluation(
    strategy: AdapterStrategy,
    grid: Grid,
    server_round: int,
    state: Mapping[str, torch.Tensor],
    config: FederationConfig,
) -> Metrics | None:
    if not config.federated_evaluation:
        return None
    arrays = p.adapter_to_arrays(state, strategy.global_keys)
    messages = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid))
    if not messages:
        return None
    replies = grid.send_and_receive(messages, timeout=config.round_timeout)
    metrics = strategy.aggregate_evaluate(server_round, replies)
    return {key: float(value) for key, value in metrics.items()} if metrics is not None else None  # type: ignore[arg-type]
