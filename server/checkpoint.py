"""Per-round server checkpoints: the global adapter and the round state, written atomically.

A restarted server resumes from the last checkpoint whose configuration fingerprint matches its own, with the same
logical run id (sites key their ledger events and noise calibration by it), the same strategy state (sampling RNG,
excluded sites, the ledger head witnessed last, the ``num-examples`` of each site, the server optimiser's memory), the
same selection state (the best round so far, its adapter, the rounds since) and the same history, so that an
interrupted run ends where an uninterrupted one would, and a site cannot roll its ledger back across a restart.

Layout: ``checkpoint.json`` pointing at tensor files, all safetensors (no pickle, so a tampered file cannot execute
code): ``round-N.safetensors`` (the global adapter after round N), ``round-B.safetensors`` (the best round's adapter,
the same file when B = N) and ``optimizer-N.safetensors`` (the server optimiser's float64 buffers, when it has any).
Tensor files are written first and the state last, so a crash never leaves a state pointing at a missing file;
files the state no longer points at are removed afterwards.

Schema evolution: ``selection`` and ``optimizer_tensors`` were added with the server optimiser; a checkpoint written
before has neither and reads as no best round yet and a fresh optimiser (its run's settings fingerprint, which now
includes the optimiser and selection settings, differs from a current run's anyway).
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
from server.selection import SelectionState
from server.strategies.state import StrategyState

STATE_FILE = "checkpoint.json"
#: The tensor files a checkpoint directory holds (others are left alone).
TENSOR_FILES = ("round-*.safetensors", "optimizer-*.safetensors")


@dataclass
class Checkpoint:
    """Everything needed to continue a run after ``completed_rounds`` rounds."""

    run_id: str
    config_fingerprint: str
    completed_rounds: int
    adapter: dict[str, torch.Tensor]
    strategy: StrategyState
    history: list[RoundRecord] = field(default_factory=list)
    selection: SelectionState = field(default_factory=SelectionState)


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    atomic_write_bytes(path, save_safetensors({k: v.contiguous() for k, v in tensors.items()}))
    return path.name


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> None:
    """Write the tensor files, then the state that points at them; files no longer pointed at are removed after."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = _write_tensors(directory / f"round-{checkpoint.completed_rounds}.safetensors", checkpoint.adapter)
    selection = checkpoint.selection
    best = None
    if selection.best_round is not None and selection.best_adapter is not None:
        best = f"round-{selection.best_round}.safetensors"
        if best != weights:
            _write_tensors(directory / best, selection.best_adapter)
    optimizer = checkpoint.strategy.optimizer
    buffers = None
    if optimizer is not None and optimizer.tensors:
        path = directory / f"optimizer-{checkpoint.completed_rounds}.safetensors"
        buffers = _write_tensors(path, dict(optimizer.tensors))
    atomic_write_json(
        directory / STATE_FILE,
        {
            "run_id": checkpoint.run_id,
            "config_fingerprint": checkpoint.config_fingerprint,
            "completed_rounds": checkpoint.completed_rounds,
            "adapter": weights,
            **checkpoint.strategy.to_json(),
            "optimizer_tensors": buffers,
            "selection": {**selection.to_json(), "adapter": best},
            "history": [record.to_json() for record in checkpoint.history],
        },
    )
    kept = {weights, best, buffers}
    for pattern in TENSOR_FILES:
        for old in directory.glob(pattern):
            if old.name not in kept:
                old.unlink(missing_ok=True)


def load_checkpoint(directory: Path) -> Checkpoint | None:
    """The last checkpoint in ``directory``, or None if there is none."""
    state_path = directory / STATE_FILE
    if not state_path.exists():
        return None
    try:
        state = json.loads(state_path.read_text())
        adapter = dict(load_safetensors((directory / state["adapter"]).read_bytes()))
        buffers = state.get("optimizer_tensors")
        tensors = dict(load_safetensors((directory / buffers).read_bytes())) if buffers else None
        selected = state.get("selection") or {}
        best = selected.get("adapter")
        if best is None:
            best_adapter = None
        elif best == state["adapter"]:
            best_adapter = adapter  # the best round is the last one: the very same tensors
        else:
            best_adapter = dict(load_safetensors((directory / best).read_bytes()))
        return Checkpoint(
            run_id=str(state["run_id"]),
            config_fingerprint=str(state["config_fingerprint"]),
            completed_rounds=int(state["completed_rounds"]),
            adapter=adapter,
            strategy=StrategyState.from_json(state, optimizer_tensors=tensors),
            history=[RoundRecord.from_json(record) for record in state["history"]],
            selection=SelectionState.from_json(selected, best_adapter),
        )
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise FederationError(f"{state_path}: unreadable checkpoint ({exc}); move it away to start afresh") from None
