"""``product``: average the LoRA products B·A and re-factorise to rank r by truncated SVD.

As in FlexLoRA (Bai et al., NeurIPS 2024) and HLoRA: the server forms M = sum_k w_k B_k A_k for each adapted layer,
and gives every site the rank-r factors of its best rank-r approximation. The head is averaged as usual.

The server optimiser (:mod:`server.optimizers`) steps the products, not the factors: a rank-r factorisation is
defined only up to an invertible r x r matrix (the SVD's signs included), so a difference of factors between two
rounds is no pseudo-gradient, while a difference of products is the averaged update itself. The optimiser's result is
re-factorised like the plain average; with ``sgd`` and server-lr 1 it is the plain average, so nothing changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from server.strategies.aggregation import average_keys, lora_pairs, product_average, refactorise
from server.strategies.base import AdapterStrategy, Tensors

#: The suffix that names an adapted layer's product B·A in the optimiser's space (``<layer>.lora_BA``).
PRODUCT = ".lora_BA"


class ProductSvd(AdapterStrategy):
    """Average B·A per layer, re-factorise by SVD; average everything else."""

    name = "product"

    def combine(self, current: Tensors, updates: Sequence[Tensors], weights: Sequence[float]) -> dict[str, Tensor]:
        """New A and B from the SVD of the averaged products; other tensors averaged."""
        return self.adapter_from(current, self.aggregate(current, updates, weights))

    def optimised(self, adapter: Tensors) -> dict[str, Tensor]:
        """Each adapted layer's product B·A (float64), and every other exchanged tensor as it is."""
        pairs = lora_pairs(self.exchanged_keys)
        paired = {k for pair in pairs.values() for k in pair}
        view = {k: adapter[k] for k in self.exchanged_keys if k not in paired}
        view.update({layer + PRODUCT: adapter[b].double() @ adapter[a].double() for layer, (a, b) in pairs.items()})
        return view

    def aggregate(self, current: Tensors, updates: Sequence[Tensors], weights: Sequence[float]) -> dict[str, Tensor]:
        """The weighted mean of each layer's products (float64) and of every other exchanged tensor."""
        pairs = lora_pairs(self.exchanged_keys)
        paired = {k for pair in pairs.values() for k in pair}
        aggregate = average_keys(updates, weights, [k for k in self.exchanged_keys if k not in paired])
        aggregate.update({layer + PRODUCT: product_average(updates, weights, a, b) for layer, (a, b) in pairs.items()})
        return aggregate

    def adapter_from(self, current: Tensors, optimised: Tensors) -> dict[str, Tensor]:
        """Each product re-factorised to the adapter's rank and dtype; every other tensor replaced."""
        adapter = {**current, **{k: v for k, v in optimised.items() if not k.endswith(PRODUCT)}}
        for layer, (a_key, b_key) in lora_pairs(self.exchanged_keys).items():
            rank, dtype = current[a_key].shape[0], current[a_key].dtype
            adapter[a_key], adapter[b_key] = refactorise(optimised[layer + PRODUCT], rank, dtype)
        return adapter
