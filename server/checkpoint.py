"""Per-round server checkpoints: the global adapter and the round state, written atomically.

A restarted server resumes from the last checkpoint whose configuration fingerprint matches its own, with the same
logical run id (sites key their ledger events and noise calibration by it), the same strategy state (sampling RNG,
excluded sites, the ledger head witnessed last and the ``num-examples`` of each site) and the same history, so that
an interrupted run ends where an uninterrupted one would, and a site cannot roll its ledger back across a restart.

Layout: ``round-N.safetensors`` (the adapter; no pickle, so a tampered file cannot execute code) and
``checkpoint.json`` pointing at it. The adapter is written first, so a crash never leaves a state pointing at a
missing file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from common.errors import FederationError
from common.federation.rounds import RoundRecord
from common.fileio import atomic_write_bytes, atomic_write_json
from server.strategies.state import StrategyState

STATE_FILE = "checkpoint.json"


@dataclass
class Checkpoint:
    """Everything needed to continue a run after ``completed_rounds`` rounds."""

    run_id: str
    config_fingerprint: str
    completed_rounds: int
    adapter: dict[str, torch.Tensor]
    strategy: StrategyState
    history: list[RoundRecord] = field(default_factory=list)


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> None:
    """Write the adapter, then the state that points at it; older adapter files are removed afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = f"round-{checkpoint.completed_rounds}.safetensors"
    atomic_write_bytes(
        directory / weights, save_safetensors({k: v.contiguous() for k, v in checkpoint.adapter.items()})
    )
    atomic_write_json(
        directory / STATE_FILE,
        {
            "run_id": checkpoint.run_id,
            "config_fingerprint": checkpoint.config_fingerprint,
            "completed_rounds": checkpoint.completed_rounds,
            "adapter": weights,
            **checkpoint.strategy.to_json(),
            "history": [record.to_json() for record in checkpoint.history],
        },
    )
    for old in directory.glob("round-*.safetensors"):
        if old.name != weights:
            old.unlink(missing_ok=True)


def load_checkpoint(directory: Path) -> Checkpoint | None:
    """The last checkpoint in ``directory``, or None if there is none."""
    state_path = directory / STATE_FILE
    if not state_path.exists():
        return None
    try:
        state = json.loads(state_path.read_text())
        adapter = load_safetensors((directory / state["adapter"]).read_bytes())
        return Checkpoint(
            run_id=str(state["run_id"]),
            config_fingerprint=str(state["config_fingerprint"]),
            completed_rounds=int(state["completed_rounds"]),
            adapter=dict(adapter),
            strategy=StrategyState.from_json(state),
            history=[RoundRecord.from_json(record) for record in state["history"]],
        )
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise FederationError(f"{state_path}: unreadable checkpoint ({exc}); move it away to start afresh") from None
