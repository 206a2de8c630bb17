"""``ffa``: FFA-LoRA (Sun, Qin, Li & Ding, ICLR 2024, "Improving LoRA in Privacy-preserving Federated Learning").

Every A stays at the value the server initialised and shared in round 0; sites train and send only B and the head.
Averaging is then exact, mean_k(B_k A) = (mean_k B_k) A, DP noise touches half the LoRA parameters, and half the
LoRA bytes travel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from server.strategies.aggregation import LORA_A, average_keys
from server.strategies.base import AdapterStrategy


class FfaLora(AdapterStrategy):
    """Exchange and average B and the head; A never changes."""

    name = "ffa"

    def select_exchanged(self, global_keys: Sequence[str], trainable: frozenset[str]) -> list[str]:
        """Everything trainable except the frozen A matrices."""
        return [k for k in global_keys if k in trainable and LORA_A not in k]

    def combine(
        self,
        current: Mapping[str, torch.Tensor],
        updates: Sequence[Mapping[str, torch.Tensor]],
        weights: Sequence[float],
    ) -> dict[str, torch.Tensor]:
        """Weighted mean of B and the head; A carried over unchanged."""
        return {**current, **average_keys(updates, weights, self.exchanged_keys)}
