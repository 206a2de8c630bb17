"""``ffa``: FFA-LoRA (Sun, Qin, Li & Ding, ICLR 2024, "Improving LoRA in Privacy-preserving Federated Learning").

Every A stays at the value the server initialised and shared in round 0; sites train and send only B and the head.
Averaging is then exact, mean_k(B_k A) = (mean_k B_k) A, DP noise touches half the LoRA parameters, and half the
LoRA bytes travel.
"""

from __future__ import annotations

from collections.abc import Sequence

from server.strategies.aggregation import LORA_A
from server.strategies.fedavg import LoraFedAvg


class FfaLora(LoraFedAvg):
    """Exchange and average B and the head (fedavg's weighted mean over fewer tensors); A never changes.

    The combination is fedavg's, unchanged: with A left out of the exchange it is carried over from the current
    adapter, which is what makes the mean exact.
    """

    name = "ffa"

    def select_exchanged(self, global_keys: Sequence[str], trainable: frozenset[str]) -> list[str]:
        """Everything trainable except the frozen A matrices."""
        return [k for k in global_keys if k in trainable and LORA_A not in k]
