"""The run configuration: one typed model, composed of the settings types, parsed once from a flat run config."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from common.federation.config import FLAT_KEYS, RESUMABLE_KEYS, FederationConfig, parse_run_config
from common.model.lora import LoraSettings
from common.training.config import TrainConfig


def test_round_trip_through_the_flat_run_config_is_exact():
    config = parse_run_config(
        {"labels": "a,b,c", "lora-targets": "query, value", "batch-size": 16, "strategy": "fedavg", "lora-r": 4}
    )
    assert config.labels == ("a", "b", "c")
    assert config.lora == LoraSettings(r=4, target_modules=("query", "value"), ffa=False)
    assert config.training.batch_size == 16 and config.training.epochs is None  # left to the recipe
    assert parse_run_config(config.to_run_config()) == config


def test_every_field_of_the_composed_settings_has_a_flat_key():
    mapped = {(section, field) for section, field in FLAT_KEYS.values()}
    assert {("training", f) for f in TrainConfig.model_fields} <= mapped
    assert {("lora", f) for f in LoraSettings.model_fields if f != "ffa"} <= mapped
    assert set(FederationConfig().to_run_config()) >= set(FLAT_KEYS)


@pytest.mark.parametrize("strategy", ["fedavg", "ffa", "product"])
def test_ffa_lora_follows_the_strategy_and_cannot_be_set_against_it(strategy):
    config = parse_run_config({"strategy": strategy})
    assert config.lora.ffa == (strategy == "ffa")
    forced = FederationConfig(strategy=strategy, lora=LoraSettings(ffa=strategy != "ffa"))
    assert forced.lora.ffa == (strategy == "ffa")


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("lora-r", 2048, "less than or equal to 1024"),
        ("batch-size", -1, "greater than or equal to 1"),
        ("learning-rate", "inf", "finite"),
        ("lora-dropout", 1.0, "less than 1"),
        ("max-length", 100000, "less than or equal to 8192"),
        ("optimizer", "lion", "adamw"),
        ("num-rounds", 0, "greater than or equal to 1"),
        ("labels", "a,a", "distinct"),
        ("labels", "a", "at least 2"),
        ("target-epsilon", float("nan"), "finite"),
        ("max-site-weight", 0, "greater than 0"),
        ("max-site-weight", 1.5, "less than or equal to 1"),
        ("max-site-weight", float("nan"), "finite"),
        ("weighting", "median", "'examples' or 'uniform'"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_flat_key_and_the_rule(key, value, rule):
    with pytest.raises(ConfigError) as caught:
        parse_run_config({key: value})
    message = str(caught.value)
    assert f"'{key}'" in message and rule in message and "\n" not in message


def test_unknown_keys_are_refused():
    with pytest.raises(ConfigError, match="lora-rank"):
        parse_run_config({"lora-rank": 8})


def test_a_defaults_table_is_a_complete_valid_config():
    defaults = FederationConfig()
    assert parse_run_config(defaults.to_run_config()) == defaults
    assert all(isinstance(v, bool | int | float | str) for v in defaults.to_run_config().values())


def test_the_fingerprint_ignores_only_what_may_change_on_resume():
    base = FederationConfig()
    flat = base.to_run_config()
    for key in RESUMABLE_KEYS:
        changed = {**flat, key: 99 if isinstance(flat[key], int | float) else "/elsewhere"}
        assert parse_run_config(changed).fingerprint() == base.fingerprint(), key
    for key, value in (("lora-r", 4), ("batch-size", 8), ("labels", "x,y"), ("strategy", "product")):
        assert parse_run_config({**flat, key: value}).fingerprint() != base.fingerprint(), key


def test_robust_weighting_defaults_and_a_cap_no_round_could_meet():
    config = FederationConfig()
    assert (config.max_site_weight, config.weighting) == (0.5, "examples")
    assert parse_run_config({"max-site-weight": 0.25, "min-sites": 4, "weighting": "uniform"}).weighting == "uniform"
    assert parse_run_config({"min-sites": 1, "max-site-weight": 1}).max_site_weight == 1
    with pytest.raises(ConfigError, match=r"0\.5 needs at least 2 updates per round, but min-sites is 1"):
        parse_run_config({"min-sites": 1})
    with pytest.raises(ConfigError, match=r"raise min-sites to 4 or max-site-weight to 0\.5"):
        parse_run_config({"max-site-weight": 0.3})
    for key in ("max-site-weight", "weighting"):  # a resumed run must weight as it did
        assert key not in RESUMABLE_KEYS and key in config.to_run_config()


def test_zero_leaves_a_training_setting_to_the_recipe_and_recipe_none_needs_them_all():
    config = parse_run_config({"batch-size": 0, "local-epochs": 0, "learning-rate": 0, "max-grad-norm": 0})
    assert config.training.batch_size is None and config.training.epochs is None
    assert config.training.learning_rate is None and config.max_grad_norm is None
    assert parse_run_config(config.to_run_config()) == config  # None travels as 0 and comes back
    with pytest.raises(ConfigError, match=r"recipe none needs every training setting given.*learning-rate"):
        parse_run_config({"recipe": "none", "batch-size": 32, "local-epochs": 1, "max-grad-norm": 1.0})
    given = {"recipe": "none", "batch-size": 32, "local-epochs": 1, "learning-rate": 0.01, "max-grad-norm": 1.0}
    assert parse_run_config(given).training.batch_size == 32
