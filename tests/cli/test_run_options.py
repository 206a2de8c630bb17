"""The run options shared by `fedtune simulate` and `fedtune server start`: declared once, defaulted by the model."""

from __future__ import annotations

import inspect

import pytest

from cli import run_options as ro
from common.errors import ConfigError


def run_values(**changes):
    """The shared options as a decorated command receives them (run-config key -> value), with changes by flag."""
    values = {key: ro.DEFAULTS.to_run_config()[key] for _, key in ro.SHARED_OPTIONS.values()}
    return {**values, **{ro.SHARED_OPTIONS[parameter][1]: value for parameter, value in changes.items()}}


@pytest.mark.parametrize(("module", "command"), [("cli.simulate", "simulate"), ("cli.server", "start")])
def test_both_commands_declare_every_shared_option_with_the_model_default(module, command):
    import importlib

    parameters = inspect.signature(getattr(importlib.import_module(module), command)).parameters
    assert set(ro.SHARED_OPTIONS) <= set(parameters) and "run" not in parameters
    defaults = ro.DEFAULTS.to_run_config()
    for parameter, (_, key) in ro.SHARED_OPTIONS.items():
        # Each default written once, in the model; a task-dependent one is None ("the task's default").
        expected = None if key in ro.TASK_DEFAULTED else defaults[key]
        assert parameters[parameter].default == expected, parameter


def test_the_decorated_command_receives_the_shared_options_by_run_config_key():
    received = {}

    @ro.with_run_options
    def command(out: str = "x", *, run: ro.RunOptions) -> None:
        received.update(run, out=out)

    command(out="y", **{name: f"value of {name}" for name in ro.SHARED_OPTIONS})
    assert (
        received["out"] == "y"
        and received["num-rounds"] == "value of rounds"
        and received["learning-rate"] == "value of lr"
    )


def test_robust_weighting_options_reach_the_config_and_errors_name_them(tmp_path):
    config = ro.federation_config(
        run_values(max_site_weight=0.75, weighting="uniform"), {"labels": ("no", "yes"), "out-dir": str(tmp_path)}
    )
    assert (config.max_site_weight, config.weighting) == (0.75, "uniform")
    with pytest.raises(ConfigError, match="option '--max-site-weight'"):
        ro.federation_config(run_values(max_site_weight=0.0), {"labels": ("no", "yes")})
    with pytest.raises(ConfigError, match="option '--weighting'"):
        ro.federation_config(run_values(weighting="median"), {"labels": ("no", "yes")})


def test_values_reach_the_config_and_errors_name_the_option(tmp_path):
    config = ro.federation_config(
        run_values(rounds=5, lr=0.5, federated_eval=False), {"labels": ("no", "yes"), "out-dir": str(tmp_path)}
    )
    assert (config.num_rounds, config.training.learning_rate, config.federated_evaluation) == (5, 0.5, False)
    assert config.out_dir == str(tmp_path)
    for parameter, flag in (("lr", "--lr"), ("rounds", "--rounds"), ("federated_eval", "--federated-eval")):
        with pytest.raises(ConfigError, match=flag):
            ro.federation_config(run_values(**{parameter: "bad"}), {"labels": ("no", "yes")})


@pytest.mark.parametrize(
    ("parameter", "value", "flag"),
    [
        ("lora_r", 2048, "--lora-r"),  # parsed once with LoraSettings' own bounds, not a looser copy
        ("batch_size", -1, "--batch-size"),  # 0 is the recipe's choice
        ("lr", float("inf"), "--lr"),
        ("max_length", 1, "--max-length"),
        ("local_epochs", -1, "--local-epochs"),
        ("server_lr", -1.0, "--server-lr"),
        ("server_beta2", 1.0, "--server-beta2"),
        ("patience", -1, "--patience"),
    ],
)
def test_composed_settings_are_validated_with_their_own_bounds_and_named_by_the_option(parameter, value, flag):
    with pytest.raises(ConfigError, match=f"option '{flag}'"):
        ro.federation_config(run_values(**{parameter: value}), {"labels": ("no", "yes")})


def test_duplicate_labels_from_the_data_are_refused():
    with pytest.raises(ConfigError, match="labels must be distinct"):
        ro.federation_config(run_values(), {"labels": ("no", "no")})


def test_server_optimiser_and_selection_options_reach_the_config_and_errors_name_them(tmp_path):
    config = ro.federation_config(
        run_values(server_optimizer="yogi", server_lr=0.01, server_beta1=0.8, select_metric="loss", patience=3),
        {"labels": ("no", "yes"), "out-dir": str(tmp_path)},
    )
    assert (config.server_optimizer.name, config.server_optimizer.lr, config.server_optimizer.beta1) == (
        "yogi",
        0.01,
        0.8,
    )
    assert (config.selection.metric, config.selection.patience) == ("loss", 3)
    with pytest.raises(ConfigError, match="option '--server-optimizer'"):
        ro.federation_config(run_values(server_optimizer="rmsprop"), {"labels": ("no", "yes")})
    with pytest.raises(ConfigError, match="option '--select-metric'"):
        ro.federation_config(run_values(select_metric="auc"), {"labels": ("no", "yes")})
