"""The kept round and early stopping, on the server's held-out data: best adapter byte for byte, patience, resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from cli.progress import selection_line
from common.errors import ConfigError
from server.checkpoint import load_checkpoint
from server.federation import CHECKPOINT_DIR
from tests.server.federation_helpers import federate, run_config, stand_ins


class ScriptedModel:
    """The server's model with a scripted server-side evaluation: the k-th evaluation gets ``values[k]``.

    Evaluation 0 is round 0's (the initial adapter); a resumed run starts at its next round (``start``).
    """

    def __init__(self, model, metric, values, start=0):
        self.model, self.metric, self.values, self.calls = model, metric, values, start

    def __getattr__(self, name):
        return getattr(self.model, name)

    can_evaluate = True

    def evaluate(self, state):
        value = self.values[self.calls]
        self.calls += 1
        other = "loss" if self.metric != "loss" else "accuracy"
        return {self.metric: value, other: 0.5}


#: Accuracy of rounds 0..6: best in round 2, then two rounds without improvement, then a better round 5.
ACCURACY = [0.5, 0.6, 0.8, 0.7, 0.75, 0.9, 0.95]


def scripted_run(tmp_path, tiny_model_dir, name, **overrides):
    # Evaluation is scripted: eval-data only has to be set (no file is read, the model is given).
    return run_config(tiny_model_dir, tmp_path / name, eval_data=str(tmp_path / "held-out.jsonl"), **overrides)


def adapter_file(out):
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def byte_identical(a, b):
    return set(a) == set(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].numpy().tobytes() == b[k].numpy().tobytes()
        for k in a
    )


def test_the_kept_adapter_is_the_best_rounds_byte_for_byte(tiny_model_dir, tmp_path, setting):
    model, keys = setting
    config = scripted_run(tmp_path, tiny_model_dir, "run", num_rounds=4)
    checkpointed = {}

    def keep(record):
        checkpointed[record.round] = load_checkpoint(tmp_path / "run" / CHECKPOINT_DIR).adapter

    result = federate(
        config, stand_ins([1, 2, 3], keys), model=ScriptedModel(model, "accuracy", ACCURACY), on_round=keep
    )
    assert result.completed_rounds == 4 and result.stop_reason is None
    assert (result.selected.round, result.selected.metric, result.selected.value) == (2, "accuracy", 0.8)
    assert byte_identical(adapter_file(tmp_path / "run"), checkpointed[2])
    assert not byte_identical(checkpointed[2], checkpointed[4])  # the last round's is a different adapter
    document = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (document["selected_round"], document["select_metric"], document["selected_value"]) == (2, "accuracy", 0.8)
    assert selection_line(result) == (
        "kept the adapter of round 2: highest accuracy on the server's held-out data (0.8)"
    )


def test_patience_stops_the_run_after_that_many_rounds_without_improvement(tiny_model_dir, tmp_path, setting):
    model, keys = setting
    config = scripted_run(tmp_path, tiny_model_dir, "run", num_rounds=6, patience=2)
    sites = stand_ins([1, 2, 3], keys)
    result = federate(config, sites, model=ScriptedModel(model, "accuracy", ACCURACY))
    # Rounds 3 and 4 do not beat round 2's 0.8: the run stops after round 4 (round 5 would have been better).
    assert (result.completed_rounds, result.planned_rounds, result.selected.round) == (4, 6, 2)
    assert all(len(site.requests) == 4 for site in sites.values())
    assert result.stop_reason == (
        "stopped early after round 4: accuracy on the server's held-out data did not improve for 2 round(s) "
        "(patience 2; best 0.8 in round 2)"
    )
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["stop_reason"] == result.stop_reason
    # Started again, the finished run neither trains nor changes its choice.
    again = federate(config, sites, model=ScriptedModel(model, "accuracy", ACCURACY, start=5))
    assert (again.completed_rounds, again.stop_reason, again.selected) == (4, result.stop_reason, result.selected)
    assert all(len(site.requests) == 4 for site in sites.values())


def test_select_metric_loss_keeps_the_lowest_loss(tiny_model_dir, tmp_path, setting):
    model, keys = setting
    losses = [0.69, 0.6, 0.3, 0.45, 0.3]  # a tie with the best keeps the earlier round
    config = scripted_run(tmp_path, tiny_model_dir, "run", num_rounds=4, select_metric="loss")
    result = federate(config, stand_ins([1, 2, 3], keys), model=ScriptedModel(model, "loss", losses))
    assert (result.selected.round, result.selected.metric, result.selected.value) == (2, "loss", 0.3)
    assert "lowest loss" in selection_line(result)


def test_without_held_out_data_the_last_round_is_kept(tiny_model_dir, tmp_path, setting):
    model, keys = setting
    config = run_config(tiny_model_dir, tmp_path / "run", num_rounds=2)
    result = federate(config, stand_ins([1, 2, 3], keys), model=model)
    assert (result.selected.round, result.selected.metric) == (2, None)
    assert byte_identical(adapter_file(tmp_path / "run"), load_checkpoint(tmp_path / "run" / CHECKPOINT_DIR).adapter)
    assert "no server-side held-out data" in selection_line(result)


def test_patience_without_held_out_data_is_one_clear_error_before_any_round(tiny_model_dir, tmp_path, setting):
    model, keys = setting
    config = run_config(tiny_model_dir, tmp_path / "run", num_rounds=2, patience=3)
    sites = stand_ins([1, 2, 3], keys)
    with pytest.raises(ConfigError, match=r"^patience 3 needs server-side held-out data .*--eval-data"):
        federate(config, sites, model=model)
    assert not any(site.requests for site in sites.values())
    assert not (tmp_path / "run" / CHECKPOINT_DIR).exists()


def test_a_resumed_run_selects_and_stops_as_an_uninterrupted_one(tiny_model_dir, tmp_path, setting):
    model, keys = setting
    straight = federate(
        scripted_run(tmp_path, tiny_model_dir, "straight", num_rounds=6, patience=2),
        stand_ins([1, 2, 3], keys),
        model=ScriptedModel(model, "accuracy", ACCURACY),
    )
    config = scripted_run(tmp_path, tiny_model_dir, "resumed", num_rounds=6, patience=2)
    sites = stand_ins([1, 2, 3], keys)

    class ServerCrash(Exception):
        pass

    def crash_in_round_four(node, reply):  # after round 3: the best (round 2) is no longer the last round
        checkpoint = load_checkpoint(tmp_path / "resumed" / CHECKPOINT_DIR)
        if checkpoint is not None and checkpoint.completed_rounds == 3:
            raise ServerCrash
        return reply

    with pytest.raises(ServerCrash):
        federate(config, sites, model=ScriptedModel(model, "accuracy", ACCURACY), tamper=crash_in_round_four)
    saved = load_checkpoint(tmp_path / "resumed" / CHECKPOINT_DIR)
    assert (saved.selection.best_round, saved.selection.since_best) == (2, 1)
    files = sorted(p.name for p in (tmp_path / "resumed" / CHECKPOINT_DIR).glob("round-*.safetensors"))
    assert files == ["round-2.safetensors", "round-3.safetensors"]
    resumed = federate(config, sites, model=ScriptedModel(model, "accuracy", ACCURACY, start=4))
    assert (resumed.completed_rounds, resumed.selected) == (straight.completed_rounds, straight.selected)
    assert resumed.stop_reason == straight.stop_reason
    assert byte_identical(adapter_file(tmp_path / "resumed"), adapter_file(tmp_path / "straight"))


def test_the_kept_adapter_is_not_the_initial_one_even_if_round_0_scored_best(tiny_model_dir, tmp_path, setting):
    model, keys = setting
    config = scripted_run(tmp_path, tiny_model_dir, "run", num_rounds=2)
    result = federate(config, stand_ins([1, 2, 3], keys), model=ScriptedModel(model, "accuracy", [0.9, 0.6, 0.7]))
    assert result.selected.round == 2
    assert not torch.equal(adapter_file(tmp_path / "run")[keys[0]], model.initial_state()[keys[0]])
