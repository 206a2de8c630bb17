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
