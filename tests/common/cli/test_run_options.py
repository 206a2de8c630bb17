"""The run options shared by `fedtune simulate` and `fedtune server start`: declared by both, named in errors."""

from __future__ import annotations

import inspect

import pytest

from common.cli import run_options as ro
from common.errors import ConfigError


def shared_values(**changes):
    defaults = ro.DEFAULTS.to_run_config()
    return {**{parameter: defaults[key] for parameter, key in ro.SHARED_OPTIONS.items()}, **changes}


@pytest.mark.parametrize("module", ["simulations.cli", "server.cli"])
def test_both_commands_declare_every_shared_option(module):
    import importlib

    command = {"simulations.cli": "simulate", "server.cli": "start"}[module]
    parameters = inspect.signature(getattr(importlib.import_module(module), command)).parameters
    assert set(ro.SHARED_OPTIONS) <= set(parameters)


def test_values_reach_the_config_and_errors_name_the_option(tmp_path):
    config = ro.federation_config(
        shared_values(rounds=5, lr=0.5, federated_eval=False), {"labels": ("no", "yes"), "out-dir": str(tmp_path)}
    )
    assert (config.num_rounds, config.learning_rate, config.federated_evaluation) == (5, 0.5, False)
    assert config.out_dir == str(tmp_path)
    for parameter, flag in (("lr", "--lr"), ("rounds", "--rounds"), ("federated_eval", "--federated-eval")):
        with pytest.raises(ConfigError, match=flag):
            ro.federation_config(shared_values(**{parameter: "bad"}), {"labels": ("no", "yes")})
