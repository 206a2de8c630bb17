"""Per-round server checkpoints: the global adapter and the round state, written atomically.

A restarted server resumes from the last checkpoint whose configuration fingerprint matches its own, with the same
logical run id (sites key their ledger events and noise calibration by it), the same sampling RNG state and the
same history, so that an interrupted run ends where an uninterrupted one would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from common.errors import FederationError
from common.fileio import atomic_write_bytes, atomic_write_json

STATE_FILE = "checkpoint.json"


@dataclass
class Checkpoint:
    """Everything needed to continue a run after ``completed_rounds`` rounds."""

    run_id: str
    config_fingerprint: str
    completed_rounds: int
    adapter: dict[str, torch.Tensor]
    rng_state: Any
    excluded: dict[int, str] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> None:
    """Write the adapter, then the state that points at it (so a crash never leaves a dangling state)."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = f"round-{checkpoint.completed_rounds}.safetensors"
    atomic_write_bytes(
        directory / weights, save_safetensors({k: v.contiguous() for k, v in checkpoint.adapter.items()})
    )
    version, internal, gauss = checkpoint.rng_state
    atomic_write_json(
        directory / STATE_FILE,
        {
            "run_id": checkpoint.run_id,
            "config_fingerprint": checkpoint.config_fingerprint,
            "completed_rounds": checkpoint.completed_rounds,
            "adapter": weights,
            "rng_state": [version, list(internal), gauss],
            "excluded": {str(k): v for k, v in checkpoint.excluded.items()},
            "history": checkpoint.history,
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
        version, internal, gauss = state["rng_state"]
        return Checkpoint(
            run_id=state["run_id"],
            config_fingerprint=state["config_fingerprint"],
            completed_rounds=int(state["completed_rounds"]),
            adapter=dict(adapter),
            rng_state=(version, tuple(internal), gauss),
            excluded={int(k): v for k, v in state["excluded"].items()},
            history=list(state["history"]),
        )
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise FederationError(f"{state_path}: unreadable checkpoint ({exc}); move it away to start afresh") from None
