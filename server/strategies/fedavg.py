"""``fedavg``: weighted average of every exchanged tensor, A and B separately (FlowerTune's choice).

Inexact for LoRA: the average of B_k A_k is not (mean B)(mean A). Kept as the common baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from server.strategies.aggregation import average_keys
from server.strategies.base import AdapterStrategy, Tensors


class LoraFedAvg(AdapterStrategy):
    """Average A, B and the head separately, weighted by examples."""

    name = "fedavg"

    def combine(self, current: Tensors, updates: Sequence[Tensors], weights: Sequence[float]) -> dict[str, Tensor]:
        """Replace every exchanged tensor by its weighted mean."""
        return {**current, **average_keys(updates, weights, self.exchanged_keys)}
