"""The server's round loop: sample, send, validate, aggregate, evaluate, checkpoint, report.

It drives one of fedtune's strategies through Flower's Grid (the same calls ``Strategy.start`` makes), adding what
a production federation needs and ``Strategy.start`` lacks: resume from the last checkpoint, a clean early end when
too few sites have budget left, a clear error when a round has too few valid updates, a per-round privacy report of
every site's reported spend, and the final adapter in PEFT format.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord
from flwr.serverapp import Grid

from common.errors import FederationError
from common.federation import protocol as p
from common.federation.config import FederationConfig
from server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from server.model import ServerModel
from server.report import write_outputs
from server.strategies import STRATEGIES, AdapterStrategy

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
RoundCallback = Callable[[dict[str, Any]], None]


@dataclass
class FederationResult:
    """How a run ended and where its outputs are."""

    run_id: str
    out_dir: Path
    completed_rounds: int
    planned_rounds: int
    stop_reason: str | None
    crashes: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no site crashed (an early end for lack of budget is not a failure)."""
        return not self.crashes


def build_strategy(config: FederationConfig, model: ServerModel, global_keys: list[str]) -> AdapterStrategy:
    """The configured strategy over this model's adapter."""
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
    )


def run_federation(
    grid: Grid,
    config: FederationConfig,
    *,
    model: ServerModel | None = None,
    on_round: RoundCallback | None = None,
) -> FederationResult:
    """Run (or resume) the federation described by ``config``; write everything under ``config.out_dir``."""
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model or ServerModel(config)
    initial = model.initial_state()
    global_keys = list(initial)
    strategy = build_strategy(config, model, global_keys)
    strategy.summary()

    checkpoint = load_checkpoint(out_dir / CHECKPOINT_DIR)
    if checkpoint is not None and checkpoint.config_fingerprint != config.fingerprint():
        raise FederationError(
            f"{out_dir / CHECKPOINT_DIR}: the checkpoint belongs to a run with different settings; "
            "use a new output directory or the same settings to resume"
        )
    if checkpoint is None:
        checkpoint = Checkpoint(
            run_id=str(uuid.uuid4()),
            config_fingerprint=config.fingerprint(),
            completed_rounds=0,
            adapter=initial,
            rng_state=random.Random(config.seed).getstate(),
        )
        if model.can_evaluate:
            metrics = model.evaluate(initial)
            checkpoint.history.append({"round": 0, "server_eval": metrics.to_dict() if metrics else None})
    else:
        log.info("resuming run %s after round %d", checkpoint.run_id, checkpoint.completed_rounds)
    strategy.rng.setstate(checkpoint.rng_state)
    strategy.excluded = dict(checkpoint.excluded)
    state = checkpoint.adapter

    stop_reason: str | None = None
    for server_round in range(checkpoint.completed_rounds + 1, config.num_rounds + 1):
        started = time.perf_counter()
        train_config = ConfigRecord({p.RUN_ID: checkpoint.run_id, p.NUM_ROUNDS: config.num_rounds})
        arrays = p.adapter_to_arrays(state, global_keys)
        messages = list(strategy.configure_train(server_round, arrays, train_config, grid))
        if not messages:
            stop_reason = f"stopped before round {server_round}: {strategy.stop_reason}"
            log.warning(stop_reason)
            break
        replies = grid.send_and_receive(messages, timeout=config.round_timeout)
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        report = strategy.last_round
        assert report is not None
        if new_arrays is None:
            eligible = [n for n in grid.get_node_ids() if n not in strategy.excluded]
            if len(eligible) < config.min_sites:
                # Sites ran out of budget: a normal end, not a failure (this round's few updates are discarded).
                stop_reason = (
                    f"stopped in round {server_round}: only {len(eligible)} site(s) still have budget "
                    f"(at least {config.min_sites} needed); {len(report.with_status('trained'))} update(s) discarded"
                )
                log.warning(stop_reason)
                checkpoint.history.append(
                    {
                        "round": server_round,
                        "sampled": report.sampled,
                        "sites": [asdict(site) for site in report.sites],
                        "train": None,
                        "aggregated": False,
                    }
                )
                break
            problems = "; ".join(
                f"{s.site_name}: {s.status} ({s.reason})" for s in report.sites if s.status != "trained"
            )
            raise FederationError(
                f"round {server_round}: only {len(report.with_status('trained'))} valid update(s), at least "
                f"{config.min_sites} needed ({problems or 'no replies'})"
            )
        state = p.arrays_to_adapter(new_arrays, source="aggregate")
        record: dict[str, Any] = {
            "round": server_round,
            "sampled": report.sampled,
            "sites": [asdict(site) for site in report.sites],
            "train": dict(train_metrics) if train_metrics is not None else None,
        }
        server_metrics = model.evaluate(state)
        record["server_eval"] = server_metrics.to_dict() if server_metrics else None
        record["federated_eval"] = _federated_evaluation(strategy, grid, server_round, new_arrays, config)
        record["seconds"] = round(time.perf_counter() - started, 3)
        checkpoint.history.append(record)
        checkpoint.completed_rounds = server_round
        checkpoint.adapter = state
        checkpoint.rng_state = strategy.rng.getstate()
        checkpoint.excluded = dict(strategy.excluded)
        save_checkpoint(out_dir / CHECKPOINT_DIR, checkpoint)
        if on_round is not None:
            on_round(record)

    crashes = [
        {"round": r["round"], **site}
        for r in checkpoint.history
        for site in r.get("sites", [])
        if site["status"] == "crashed"
    ]
    result = FederationResult(
        run_id=checkpoint.run_id,
        out_dir=out_dir,
        completed_rounds=checkpoint.completed_rounds,
        planned_rounds=config.num_rounds,
        stop_reason=stop_reason,
        crashes=crashes,
        history=checkpoint.history,
    )
    model.save(state, out_dir / "adapter")
    write_outputs(out_dir, config, result)
    return result


def _federated_evaluation(
    strategy: AdapterStrategy, grid: Grid, server_round: int, arrays: Any, config: FederationConfig
) -> dict[str, float] | None:
    if not config.federated_evaluation:
        return None
    messages = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid))
    if not messages:
        return None
    replies = grid.send_and_receive(messages, timeout=config.round_timeout)
    metrics = strategy.aggregate_evaluate(server_round, replies)
    return dict(metrics) if metrics is not None else None  # type: ignore[arg-type]
