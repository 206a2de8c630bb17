"""``product``: average the LoRA products B·A and re-factorise to rank r by truncated SVD.

As in FlexLoRA (Bai et al., NeurIPS 2024) and HLoRA: the server forms M = sum_k w_k B_k A_k for each adapted layer,
and gives every site the rank-r factors of its best rank-r approximation. The head is averaged as usual.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from server.strategies.aggregation import average_keys, lora_pairs, product_average_refactorised
from server.strategies.base import AdapterStrategy, Tensors


class ProductSvd(AdapterStrategy):
    """Average B·A per layer, re-factorise by SVD; average everything else."""

    name = "product"

    def combine(self, current: Tensors, updates: Sequence[Tensors], weights: Sequence[float]) -> dict[str, Tensor]:
        """New A and B from the SVD of the averaged products; other tensors averaged."""
        pairs = lora_pairs(self.exchanged_keys)
        paired = {k for pair in pairs.values() for k in pair}
        combined = dict(current)
        combined.update(average_keys(updates, weights, [k for k in self.exchanged_keys if k not in paired]))
        for a_key, b_key in pairs.values():
            combined[a_key], combined[b_key] = product_average_refactorised(updates, weights, a_key, b_key)
        return combined
