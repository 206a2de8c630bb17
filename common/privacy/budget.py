"""A dataset's budget: the site's settings (which ledger, what limit, which key) and what a dataset has spent of it.

The site sets its budget, never a server. :class:`BudgetStatus` is the answer to "what has this dataset spent, and
may it train privately at all?"; :class:`~common.privacy.ledger.PrivacyLedger` computes it from the recorded events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.privacy.accountant import AccountantName

if TYPE_CHECKING:
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
        from common.privacy.ledger import PrivacyLedger  # the ledger module uses BudgetStatus from this one
        from common.privacy.signing import load_signing_key

        key = load_signing_key(self.signing_key) if self.signing_key is not None else None
        return PrivacyLedger(self.ledger, signing_key=key)


@dataclass(frozen=True)
class BudgetStatus:
    """What the most exposed record of one dataset has spent of the limit, recomputed from the recorded events.

    ``spent`` is the largest epsilon of any of the dataset's ``records`` (every record's history composes every
    event whose record set contained it, whatever dataset or run recorded it), at ``delta`` with ``accountant`` (the
    ledger's); infinite once any of its records was trained on without privacy; reserved-only events count as
    spent. ``events`` is the length of that record's history; ``classes`` how many distinct histories the dataset's
    records have.
    """

    dataset_id: str
    fingerprint: str
    records: int
    spent: float
    limit: float | None
    events: int
    classes: int
    non_private: bool
    delta: float
    accountant: AccountantName

    @property
    def remaining(self) -> float | None:
        """Epsilon left under the limit for the most exposed record (never negative); None when there is no limit."""
        return None if self.limit is None else max(0.0, self.limit - self.spent)

    def refusal(self) -> str | None:
        """Why this dataset may not train privately at all, or None if it may.

        Records trained without privacy have an infinite epsilon for good: no noise added later makes a release
        about them private. A record that spent the limit has nothing left for even the smallest round.
        """
        name = f"dataset {self.dataset_id} ({self.records} records, {self.fingerprint[:12]})"
        if self.non_private:
            return f"{name}: some of its records were trained on without privacy; no noise can make that private"
        if self.limit is not None and self.spent >= self.limit:
            return (
                f"{name}: its most exposed records have already spent epsilon {self.spent:.4g} of the limit "
                f"{self.limit:g} at delta {self.delta:g} in {self.events} event(s); no further private training fits"
            )
        return None


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
