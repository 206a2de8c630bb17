"""A site's own settings, from its node config. The server cannot set or override any of them.

Flower passes node config to a SuperNode with ``--node-config 'data-path="..." ledger-path="..." ...'``; values are
flat ``str | int | float | bool`` with kebab-case keys. The data path, the ledger, the epsilon limit and delta, and
whether held-out metrics may be released belong to the data owner.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.data.spec import DataSpec
from common.parsing import parse_settings
from common.privacy.budget import DEFAULT_MAX_EPSILON, BudgetSettings
from common.training.config import DEFAULT_DELTA, DEFAULT_EVAL_FRACTION

#: Node-config keys Flower itself sets for simulated SuperNodes (not site settings).
FLOWER_SIMULATION_KEYS = frozenset({"partition-id", "num-partitions"})


class SiteSettings(BaseModel):
    """What a data-owning site decides for itself."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, alias_generator=lambda n: n.replace("_", "-")
    )

    site_name: str = Field(default="site", min_length=1)
    data_path: Path
    ledger_path: Path
    max_epsilon: float | None = DEFAULT_MAX_EPSILON
    delta: float = Field(default=DEFAULT_DELTA, gt=0, lt=1)
    signing_key: Path | None = None
    text_column: str = "text"
    label_column: str = "label"
    evaluate: bool = False  # release (non-DP) metrics on a held-out split when the server asks
    eval_fraction: float = Field(default=DEFAULT_EVAL_FRACTION, gt=0, lt=1)
    split_seed: int = 0
    seed: int | None = None  # reproducible experiments only: a real site leaves its noise unseeded
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("max_epsilon", mode="before")
    @classmethod
    def _limit(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in {"none", "unlimited", ""}:
            return None
        return value

    @field_validator("max_epsilon")
    @classmethod
    def _finite_positive(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"must be a finite number > 0 or 'none'; got {value}")
        return value

    @field_validator("signing_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @property
    def budget(self) -> BudgetSettings:
        """The site's ledger settings."""
        return BudgetSettings(ledger=self.ledger_path, max_epsilon=self.max_epsilon, signing_key=self.signing_key)

    def data_spec(self, labels: tuple[str, ...]) -> DataSpec:
        """How to read the site's data file, against the federation's label set."""
        return DataSpec(text_column=self.text_column, label_column=self.label_column, labels=labels)

    def to_node_config(self) -> dict[str, bool | int | float | str]:
        """Flat node config (for ``flower-supernode --node-config`` or the simulation's site table)."""
        flat: dict[str, bool | int | float | str] = {}
        for key, value in self.model_dump(by_alias=True, mode="json").items():
            if value is None:
                if key == "max-epsilon":
                    flat[key] = "none"
                continue
            flat[key] = value
        return flat


def parse_site_settings(node_config: Mapping[str, Any], *, source: str = "node config") -> SiteSettings:
    """SiteSettings from a node config (Flower's own simulation keys are ignored)."""
    values = {k: v for k, v in node_config.items() if k not in FLOWER_SIMULATION_KEYS}
    return parse_settings(SiteSettings, values, context=source)
