"""A site's settings come from its node config, round-trip through it, and are validated once."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ConfigError
from common.federation.site import FLOWER_SIMULATION_KEYS, SiteSettings, parse_site_settings


def test_node_config_round_trip_including_no_limit(tmp_path: Path):
    site = SiteSettings(
        site_name="a", data_path=tmp_path / "d.jsonl", ledger_path=tmp_path / "l.jsonl", max_epsilon=None
    )
    flat = site.to_node_config()
    assert flat["max-epsilon"] == "none" and "signing-key" not in flat
    assert parse_site_settings(flat) == site


def test_flower_simulation_keys_are_ignored_and_unknown_keys_refused(tmp_path: Path):
    base = {"data-path": str(tmp_path / "d"), "ledger-path": str(tmp_path / "l")}
    assert parse_site_settings({**base, **{k: 1 for k in FLOWER_SIMULATION_KEYS}}).data_path == tmp_path / "d"
    with pytest.raises(ConfigError, match="target-epsilon"):
        parse_site_settings({**base, "target-epsilon": 100.0})  # a run setting cannot sneak into the site's


@pytest.mark.parametrize(("limit", "message"), [(-1.0, "finite number > 0"), (float("inf"), "finite number > 0")])
def test_a_bad_limit_is_one_clear_error(tmp_path: Path, limit, message):
    with pytest.raises(ConfigError, match=message):
        parse_site_settings({"data-path": "d", "ledger-path": "l", "max-epsilon": limit})


def test_labels_and_released_metrics_round_trip_through_the_node_config(tmp_path: Path):
    flat = {"data-path": "d", "ledger-path": "l", "labels": "neg, pos,neutral", "release-metrics": "loss,accuracy"}
    site = parse_site_settings(flat)
    assert site.labels == ("neg", "pos", "neutral") and site.release_metrics == ("loss", "accuracy")
    assert site.evaluate and site.data_spec().labels == site.labels
    assert parse_site_settings(site.to_node_config()) == site
    silent = parse_site_settings({"data-path": "d", "ledger-path": "l"})
    assert silent.labels is None and silent.release_metrics == () and not silent.evaluate
    assert "release-metrics" not in silent.to_node_config() and "labels" not in silent.to_node_config()


@pytest.mark.parametrize(
    ("given", "expected"),
    [(True, ("accuracy", "macro-f1", "loss")), (False, ()), ("true", ("accuracy", "macro-f1", "loss"))],
)
def test_the_older_evaluate_key_means_all_metrics_or_none(given, expected):
    assert parse_site_settings({"data-path": "d", "ledger-path": "l", "evaluate": given}).release_metrics == expected


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"release-metrics": "accuracy,train-loss"}, "distinct names from"),
        ({"release-metrics": "loss,loss"}, "distinct names from"),
        ({"evaluate": True, "release-metrics": "loss"}, "give release-metrics only"),
        ({"evaluate": "sometimes"}, "evaluate must be true or false"),
        ({"labels": "only"}, "at least 2 distinct"),
        ({"labels": "a,b,a"}, "at least 2 distinct"),
    ],
)
def test_a_bad_label_set_or_metric_list_is_one_clear_error(values, message):
    with pytest.raises(ConfigError, match=message):
        parse_site_settings({"data-path": "d", "ledger-path": "l", **values})
