"""Keep the best of a sequence of evaluated models, and stop early when it stops improving.

Used by the server over rounds (on its own held-out data) and by ``fedtune train`` over epochs (on its evaluation
split). The kept candidate has the best ``metric`` (accuracy, macro_f1: highest; loss: lowest); an improvement must
be strict, so a tie keeps the earlier candidate; a missing or non-finite value never improves. With ``patience``
P > 0 the sequence stops once P evaluated candidates in a row have not improved on the best.

Invariant: the kept adapter IS the best candidate's adapter (the same tensors); :class:`SelectionState` is all a
resumed run needs to select and stop exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

SelectMetric = Literal["accuracy", "macro_f1", "loss"]


class SelectionSettings(BaseModel):
    """Which candidate's adapter is the result (by ``metric``), and when to stop early (0: never)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: SelectMetric = "accuracy"
    patience: int = Field(default=0, ge=0)


#: Evaluation metrics by name (None: not computed).
Metrics = Mapping[str, float | None]

#: For each ``select-metric``, whether a larger value is better.
HIGHER_IS_BETTER: dict[str, bool] = {"accuracy": True, "macro_f1": True, "loss": False}


@dataclass
class SelectionState:
    """The best round so far, its metric value and global adapter, and the evaluated rounds since (checkpointed)."""

    best_round: int | None = None
    best_value: float | None = None
    best_adapter: dict[str, Tensor] | None = None
    since_best: int = 0

    def to_json(self) -> dict[str, Any]:
        """The JSON part (the checkpoint stores the adapter in a safetensors file)."""
        return {"best_round": self.best_round, "best_value": self.best_value, "since_best": self.since_best}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], adapter: dict[str, Tensor] | None) -> SelectionState:
        """Inverse of :meth:`to_json`, with the best round's adapter read by the checkpoint."""
        best = data.get("best_round")
        value = data.get("best_value")
        return cls(
            best_round=int(best) if best is not None else None,
            best_value=float(value) if value is not None else None,
            best_adapter=adapter,
            since_best=int(data.get("since_best", 0)),
        )


class RoundSelector:
    """Tracks the best candidate by the configured metric (module docstring) and says when patience has run out."""

    def __init__(
        self,
        settings: SelectionSettings,
        state: SelectionState | None = None,
        *,
        where: str = "the server's held-out data",
        unit: str = "round",
    ) -> None:
        self.metric = settings.metric
        self.patience = settings.patience
        self.state = state if state is not None else SelectionState()
        self.where = where
        self.unit = unit

    def observe(self, server_round: int, metrics: Metrics | None, adapter: dict[str, Tensor]) -> None:
        """Record the server's evaluation of round ``server_round``'s global ``adapter`` (None: not evaluated)."""
        if metrics is None:
            return
        value = metrics.get(self.metric)
        if value is not None and math.isfinite(value) and self._better(value):
            self.state = SelectionState(best_round=server_round, best_value=float(value), best_adapter=adapter)
        else:
            self.state.since_best += 1

    def _better(self, value: float) -> bool:
        best = self.state.best_value
        if best is None:
            return True
        return value > best if HIGHER_IS_BETTER[self.metric] else value < best

    def stop_reason(self, completed_rounds: int) -> str | None:
        """Why the run stops now (patience run out), or None to go on."""
        state = self.state
        if not self.patience or state.since_best < self.patience:
            return None
        unit = self.unit
        best = f"best {state.best_value:.4g} in {unit} {state.best_round}" if state.best_round is not None else "none"
        return (
            f"stopped early after {unit} {completed_rounds}: {self.metric} on {self.where} did not "
            f"improve for {state.since_best} {unit}(s) (patience {self.patience}; {best})"
        )
