"""Server optimisers (Reddi et al. 2021): their update rules, sgd at lr 1 is plain aggregation, exact resume."""

from __future__ import annotations

import pytest
import torch

from common.federation.server_settings import ServerOptimizerSettings
from server.checkpoint import load_checkpoint
from server.federation import CHECKPOINT_DIR
from server.model import ServerModel
from server.optimizers import SERVER_OPTIMIZERS, build_server_optimizer
from tests.server.federation_helpers import exchanged_keys, federate, final_adapter, run_config, stand_ins


def optimizer(name, **settings):
    return build_server_optimizer(ServerOptimizerSettings(name=name, **settings))


def steps(opt, start, aggregates):
    """Apply ``aggregates`` (one value each) in turn to {"w": start}; the values after each step."""
    current = {"w": torch.tensor([start])}
    values = []
    for value in aggregates:
        current = opt.step(current, {"w": torch.tensor([value])})
        values.append(current["w"].item())
    return values


def identical(a, b):
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_the_registry_names_every_optimiser_of_the_settings():
    assert set(SERVER_OPTIMIZERS) == {"sgd", "momentum", "adam", "yogi"}
    assert all(cls.name == name for name, cls in SERVER_OPTIMIZERS.items())


def test_sgd_steps_lr_times_the_pseudo_gradient_and_lr_1_returns_the_aggregate_bit_for_bit():
    assert steps(optimizer("sgd", lr=0.5), 1.0, [3.0]) == [2.0]  # 1 + 0.5 (3 - 1)
    # x + (a - x) in floating point is not always a: a tiny aggregate after a large global loses its low bits.
    current = {"w": torch.tensor([1.0, 3e38, -2.5], dtype=torch.float32)}
    aggregate = {"w": torch.tensor([1.2345e-12, -3e-38, 7.0], dtype=torch.float32)}
    x, a = current["w"].double(), aggregate["w"].double()
    assert not torch.equal((x + (a - x)).float(), aggregate["w"])
    assert identical(optimizer("sgd", lr=1.0).step(current, aggregate), aggregate)


def test_momentum_accumulates_pseudo_gradients():
    # d1 = (2, 0): m = (2, 0), x = (1, -2) + 0.5 m = (2, -2); d2 = (0, 2): m = 0.5 (2, 0) + (0, 2) = (1, 2),
    # x = (2, -2) + 0.5 (1, 2) = (2.5, -1): the first coordinate still moves, on momentum alone.
    opt = optimizer("momentum", lr=0.5, momentum=0.5)
    first = opt.step({"w": torch.tensor([1.0, -2.0])}, {"w": torch.tensor([3.0, -2.0])})
    assert first["w"].tolist() == [2.0, -2.0]
    second = opt.step(first, {"w": torch.tensor([2.0, 0.0])})
    assert second["w"].tolist() == [2.5, -1.0]
    assert opt.state().tensors["m/w"].tolist() == [1.0, 2.0] and opt.state().steps == 2


def test_adam_follows_reddi_et_al_algorithm_2():
    # lr 0.5, b1 0.5, b2 0.5, tau 0.5 (v starts at tau^2 = 0.25).
    # Step 1: d = 0.5: m = 0.25, v = 0.5 * 0.25 + 0.5 * 0.25 = 0.25, x = 0 + 0.5 * 0.25 / (0.5 + 0.5) = 0.125.
    # Step 2: d = -0.375 - 0.125 = -0.5: m = 0.125 - 0.25 = -0.125, v = 0.25, x = 0.125 - 0.0625 = 0.0625.
    opt = optimizer("adam", lr=0.5, beta1=0.5, beta2=0.5, tau=0.5)
    assert steps(opt, 0.0, [0.5, -0.375]) == [0.125, 0.0625]
    state = opt.state()
    assert (state.steps, state.tensors["m/w"].item(), state.tensors["v/w"].item()) == (2, -0.125, 0.25)
    assert all(t.dtype == torch.float64 for t in state.tensors.values())


def test_yogi_moves_v_additively_where_adam_decays_it():
    # lr 1, b1 0.5, b2 0.75, tau 0.75 (v starts at 0.5625).
    # Step 1: d = 2, d^2 = 4 > v: v = 0.5625 + 0.25 * 4 = 1.5625 (sqrt 1.25), m = 1, x = 1 / (1.25 + 0.75) = 0.5.
    # Step 2: d = 0: Yogi's v stays 1.5625 (Adam's would decay to 0.75 v); m = 0.5, x = 0.5 + 0.5 / 2 = 0.75.
    settings = {"lr": 1.0, "beta1": 0.5, "beta2": 0.75, "tau": 0.75}
    yogi = optimizer("yogi", **settings)
    assert steps(yogi, 0.0, [2.0, 0.5]) == [0.5, 0.75]
    assert yogi.state().tensors["v/w"].item() == 1.5625
    adam = optimizer("adam", **settings)
    first = adam.step({"w": torch.tensor([0.0])}, {"w": torch.tensor([2.0])})
    adam.step(first, first)  # d = 0
    assert adam.state().tensors["v/w"].item() == 0.75 * (0.75 * 0.5625 + 0.25 * 4)


def test_a_restored_optimiser_continues_bit_for_bit_and_refuses_another_optimisers_state():
    g = torch.Generator().manual_seed(0)
    rounds = [({"w": torch.randn(3, 4, generator=g)}, {"w": torch.randn(3, 4, generator=g)}) for _ in range(4)]
    original = optimizer("adam", lr=0.01)
    for current, aggregate in rounds[:2]:
        original.step(current, aggregate)
    restored = optimizer("adam", lr=0.01)
    restored.restore(original.state())
    for current, aggregate in rounds[2:]:
        assert identical(original.step(current, aggregate), restored.step(current, aggregate))
    assert original.state() == restored.state()
    with pytest.raises(Exception, match="holds adam server-optimiser state; this run uses yogi"):
        optimizer("yogi").restore(original.state())


@pytest.mark.parametrize("strategy", ["fedavg", "ffa", "product"])
def test_sgd_with_server_lr_1_is_exactly_todays_aggregation(tiny_model_dir, tmp_path, monkeypatch, strategy):
    composed = run_config(tiny_model_dir, tmp_path / "sgd", strategy=strategy, num_rounds=2)
    assert (composed.server_optimizer.name, composed.server_optimizer.learning_rate) == ("sgd", 1.0)  # the defaults
    keys = exchanged_keys(composed)
    federate(composed, stand_ins([1, 2, 3], keys))
    plain = run_config(tiny_model_dir, tmp_path / "plain", strategy=strategy, num_rounds=2)
    monkeypatch.setattr("server.federation.build_server_optimizer", lambda settings: None)  # the strategy alone
    federate(plain, stand_ins([1, 2, 3], keys))
    assert identical(final_adapter(composed), final_adapter(plain))
    assert not identical(final_adapter(plain), ServerModel(plain).initial_state())


@pytest.mark.parametrize("name", ["momentum", "adam", "yogi"])
def test_under_ffa_an_optimiser_never_moves_the_frozen_a_matrices(tiny_model_dir, tmp_path, name):
    config = run_config(tiny_model_dir, tmp_path / name, strategy="ffa", num_rounds=3, server_optimizer=name)
    keys = exchanged_keys(config)
    federate(config, stand_ins([1, 2, 3], keys))
    final, initial = final_adapter(config), ServerModel(config).initial_state()
    assert all(torch.equal(final[k], initial[k]) for k in final if ".lora_A." in k)
    assert all(not torch.equal(final[k], initial[k]) for k in keys)
    buffers = load_checkpoint(tmp_path / name / CHECKPOINT_DIR).strategy.optimizer.tensors
    assert buffers and not any(".lora_A." in k for k in buffers)  # A never enters the optimiser


def test_product_steps_the_products_and_keeps_the_adapters_rank(tiny_model_dir, tmp_path):
    settings = {"strategy": "product", "num_rounds": 2, "server_optimizer": "adam", "server_lr": 0.01}
    config = run_config(tiny_model_dir, tmp_path / "run", **settings)
    federate(config, stand_ins([1, 2, 3], exchanged_keys(config)))
    final, initial = final_adapter(config), ServerModel(config).initial_state()
    assert all(final[k].shape == initial[k].shape and final[k].dtype == initial[k].dtype for k in initial)
    buffers = load_checkpoint(tmp_path / "run" / CHECKPOINT_DIR).strategy.optimizer.tensors
    products = [k for k in buffers if k.endswith(".lora_BA")]
    assert products and not any(".lora_A." in k or ".lora_B." in k for k in buffers)


def test_adam_state_survives_a_resume_bit_for_bit(tiny_model_dir, tmp_path):
    # As the resume test of test_federation.py: deterministic stand-in sites, a server that dies in round 2.
    settings = {"num_rounds": 3, "sites_per_round": 2, "server_optimizer": "adam", "server_lr": 0.05}
    config = run_config(tiny_model_dir, tmp_path / "straight", **settings)
    keys = exchanged_keys(config)
    federate(config, stand_ins([1, 2, 3], keys))
    straight = load_checkpoint(tmp_path / "straight" / CHECKPOINT_DIR)

    resumed_config = run_config(tiny_model_dir, tmp_path / "resumed", **settings)
    sites = stand_ins([1, 2, 3], keys)

    class ServerCrash(Exception):
        pass

    def crash_in_round_two(node, reply):
        if load_checkpoint(tmp_path / "resumed" / CHECKPOINT_DIR) is not None:
            raise ServerCrash
        return reply

    with pytest.raises(ServerCrash):
        federate(resumed_config, sites, tamper=crash_in_round_two)
    after_one = load_checkpoint(tmp_path / "resumed" / CHECKPOINT_DIR)
    assert after_one.completed_rounds == 1 and after_one.strategy.optimizer.steps == 1
    federate(resumed_config, sites)
    resumed = load_checkpoint(tmp_path / "resumed" / CHECKPOINT_DIR)
    assert resumed.strategy.optimizer == straight.strategy.optimizer  # m, v (float64) and steps, bit for bit
    assert resumed.strategy.optimizer.steps == 3
    assert identical(resumed.adapter, straight.adapter)


def test_server_lr_defaults_per_optimiser_and_zero_in_a_run_config_means_default():
    from common.federation.config import parse_run_config

    assert parse_run_config({"server-optimizer": "adam"}).server_optimizer.learning_rate == 0.01
    assert parse_run_config({"server-optimizer": "yogi", "server-lr": 0}).server_optimizer.learning_rate == 0.01
    assert parse_run_config({"server-optimizer": "momentum"}).server_optimizer.learning_rate == 1.0
    assert parse_run_config({"server-optimizer": "adam", "server-lr": 0.3}).server_optimizer.learning_rate == 0.3
    config = parse_run_config({"server-optimizer": "adam"})
    assert parse_run_config(config.to_run_config()) == config
