"""A site's budget settings: which ledger, what epsilon limit, which signing key. The site sets them, never a server."""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.privacy.ledger import PrivacyLedger

#: The lifetime epsilon limit per dataset when a site does not choose one.
DEFAULT_MAX_EPSILON = 10.0


def default_ledger_path() -> Path:
    """The per-user ledger (e.g. ~/.local/share/fedtune/ledger.jsonl on Linux)."""
    from platformdirs import user_data_path

    return user_data_path("fedtune", appauthor=False) / "ledger.jsonl"


class BudgetSettings(BaseModel):
    """Where a site's spend is recorded and how much each dataset may spend in total.

    ``max_epsilon=None`` means no limit; it is only useful to record a non-private baseline honestly (such a dataset
    is then marked as having spent an infinite epsilon, and no limit will ever admit it again).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ledger: Path = Field(default_factory=default_ledger_path)
    max_epsilon: float | None = DEFAULT_MAX_EPSILON
    signing_key: Path | None = None

    @field_validator("max_epsilon")
    @classmethod
    def _positive_finite(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"the epsilon limit must be a finite number > 0 (or none); got {value}")
        return value

    def open_ledger(self) -> PrivacyLedger:
        """The ledger, with the signing key loaded if one is configured."""
        from common.privacy.signing import load_signing_key

        key = load_signing_key(self.signing_key) if self.signing_key is not None else None
        return PrivacyLedger(self.ledger, signing_key=key)


def parse_limit(text: str) -> float | None:
    """``--max-epsilon`` value: a positive number, or 'none' for no limit."""
    from common.errors import ConfigError

    if text.strip().lower() in {"none", "unlimited"}:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--max-epsilon must be a number > 0 or 'none'; got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"--max-epsilon must be a finite number > 0 or 'none'; got {text!r}")
    return value
