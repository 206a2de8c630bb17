"""Checkpoints round-trip exactly: adapter bit for bit, strategy state, typed history."""

from __future__ import annotations

import random

import pytest
import torch

from common.errors import FederationError
from common.federation.rounds import RoundRecord, SiteResult, Status
from common.privacy.chain import LedgerHead
from server.checkpoint import STATE_FILE, Checkpoint, load_checkpoint, save_checkpoint
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
