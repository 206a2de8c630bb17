"""Checkpoints round-trip exactly: adapter and optimiser buffers bit for bit, strategy and selection state, history."""

from __future__ import annotations

import json
import random

import pytest
import torch

from common.errors import FederationError
from common.federation.rounds import RoundRecord, SiteResult, Status
from common.privacy.chain import LedgerHead
from server.checkpoint import STATE_FILE, Checkpoint, load_checkpoint, save_checkpoint
from server.optimizers import OptimizerState
from server.selection import SelectionState
from server.strategies.state import StrategyState


def checkpoint(rounds: int) -> Checkpoint:
    rng = random.Random(7)
    rng.random()
    site = SiteResult(3, "site-c", Status.REFUSED, "budget-exhausted", key_fingerprint="SHA256:x")
    head = LedgerHead("ledger-c", 7, "c" * 64)
    trained = SiteResult(4, "site-d", Status.TRAINED, metrics={"num-examples": 80.0}, ledger_head=head)
    return Checkpoint(
        run_id="run-1",
        config_fingerprint="f" * 64,
        completed_rounds=rounds,
        adapter={"a": torch.randn(3, 2, dtype=torch.float32), "b": torch.arange(4, dtype=torch.float16)},
        strategy=StrategyState(
            rng_state=rng.getstate(),
            excluded={"site-c": "refused: budget-exhausted"},
            witnesses={"site-d": head},
            examples={"site-d": 80},
        ),
        history=[
            RoundRecord(0, server_eval={"accuracy": 0.5, "roc_auc": None}),
            RoundRecord(1, (3, 4), (site, trained), upload_precision="float32"),
        ],
    )


def test_round_trip_is_exact(tmp_path):
    saved = checkpoint(1)
    save_checkpoint(tmp_path, saved)
    loaded = load_checkpoint(tmp_path)
    assert loaded is not None
    assert (loaded.run_id, loaded.config_fingerprint, loaded.completed_rounds) == ("run-1", "f" * 64, 1)
    assert all(
        torch.equal(loaded.adapter[k], v) and loaded.adapter[k].dtype == v.dtype for k, v in saved.adapter.items()
    )
    assert loaded.strategy == saved.strategy  # exclusions, witnessed heads and each site's N
    assert loaded.history == saved.history
    # The restored RNG continues exactly where the saved one was.
    original, restored = random.Random(), random.Random()
    original.setstate(saved.strategy.rng_state)
    restored.setstate(loaded.strategy.rng_state)
    assert [original.random() for _ in range(5)] == [restored.random() for _ in range(5)]


def test_only_the_latest_adapter_file_is_kept(tmp_path):
    save_checkpoint(tmp_path, checkpoint(1))
    save_checkpoint(tmp_path, checkpoint(2))
    assert sorted(p.name for p in tmp_path.glob("round-*.safetensors")) == ["round-2.safetensors"]
    assert load_checkpoint(tmp_path).completed_rounds == 2


def test_no_checkpoint_is_none_and_a_broken_one_is_a_clear_error(tmp_path):
    assert load_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path, checkpoint(1))
    (tmp_path / "round-1.safetensors").unlink()
    with pytest.raises(FederationError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path)
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(FederationError, match="move it away"):
        load_checkpoint(tmp_path)


def with_optimizer_and_best(rounds: int, best: int) -> Checkpoint:
    saved = checkpoint(rounds)
    g = torch.Generator().manual_seed(5)
    buffers = {f"{b}/a": torch.randn(3, 2, generator=g, dtype=torch.float64) for b in ("m", "v")}
    saved.strategy.optimizer = OptimizerState("adam", rounds, buffers)
    best_adapter = {k: v + 1 for k, v in saved.adapter.items()} if best != rounds else saved.adapter
    saved.selection = SelectionState(best_round=best, best_value=0.75, best_adapter=best_adapter, since_best=1)
    return saved


def identical(a, b):
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_optimizer_buffers_and_the_best_rounds_adapter_round_trip_bit_for_bit(tmp_path):
    saved = with_optimizer_and_best(3, best=2)
    save_checkpoint(tmp_path, saved)
    loaded = load_checkpoint(tmp_path)
    assert loaded.strategy == saved.strategy  # the optimiser's float64 buffers and step count included
    assert loaded.strategy.optimizer.tensors["v/a"].dtype == torch.float64
    assert loaded.selection.to_json() == saved.selection.to_json()
    assert identical(loaded.selection.best_adapter, saved.selection.best_adapter)
    names = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert names == ["optimizer-3.safetensors", "round-2.safetensors", "round-3.safetensors"]
    # A new best in the last round: one adapter file serves both, and older files go.
    save_checkpoint(tmp_path, with_optimizer_and_best(4, best=4))
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["optimizer-4.safetensors", "round-4.safetensors"]
    reloaded = load_checkpoint(tmp_path)
    assert reloaded.selection.best_adapter is reloaded.adapter


def test_a_checkpoint_written_before_the_server_optimiser_still_loads(tmp_path):
    save_checkpoint(tmp_path, checkpoint(1))
    state = json.loads((tmp_path / STATE_FILE).read_text())
    for key in ("optimizer", "optimizer_tensors", "selection"):
        del state[key]
    state["strategy_version"] = 2
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    loaded = load_checkpoint(tmp_path)
    assert loaded.strategy.optimizer is None  # a fresh optimiser
    assert loaded.selection == SelectionState()  # no best round yet
    assert loaded.strategy == checkpoint(1).strategy
