"""What a privacy-consuming act did, as an immutable record (the dp_accounting ``DpEvent`` idea).

One :class:`DpSgdEvent` is ``steps`` applications of the Poisson-subsampled Gaussian mechanism with the same noise
multiplier and sample rate, under add/remove-one adjacency (Abadi et al., CCS 2016: "Deep Learning with Differential
Privacy"). Epsilon is never stored: accountants recompute it from a sequence of events.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, field_validator

#: The only mechanism fedtune trains with; recorded so a ledger can refuse events it does not know how to account.
MECHANISM = "dpsgd-poisson-gaussian/add-remove"


class DpSgdEvent(BaseModel):
    """``steps`` DP-SGD steps at ``noise_multiplier`` (sigma) and Poisson ``sample_rate`` (q).

    ``max_grad_norm`` (the clip C) does not change epsilon but is part of what happened: the noise standard deviation
    is ``sigma * C``. Fields are keyword-only (a pydantic model), so sigma and q cannot be swapped silently.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float

    @field_validator("noise_multiplier")
    @classmethod
    def _sigma(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"noise multiplier must be finite and >= 0; got {value}")
        return value

    @field_validator("sample_rate")
    @classmethod
    def _q(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"sample rate must be in (0, 1]; got {value}")
        return value

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"steps must be >= 1; got {value}")
        return value

    @field_validator("max_grad_norm")
    @classmethod
    def _clip(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"max grad norm (clip) must be > 0; got {value}")
        return value


def compose_history(events: Iterable[DpSgdEvent]) -> list[tuple[float, float, int]]:
    """Opacus accountant history: steps of events with equal (sigma, q) summed, in first-seen order.

    Merging is exact (self-composition of one mechanism) and keeps PRV accounting fast: its cost grows with the
    number of *distinct* mechanisms, not with the number of rounds.
    """
    merged: dict[tuple[float, float], int] = {}
    for event in events:
        key = (event.noise_multiplier, event.sample_rate)
        merged[key] = merged.get(key, 0) + event.steps
    return [(sigma, q, steps) for (sigma, q), steps in merged.items()]
