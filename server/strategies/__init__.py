"""Aggregation strategies for LoRA adapters, as small classes over Flower's FedAvg.

* ``fedavg``: average A and B separately (what FlowerTune does); inexact, since mean(B)mean(A) != mean(BA).
* ``ffa``: FFA-LoRA (Sun et al., ICLR 2024): A frozen and shared from round 0, only B and the head exchanged;
  averaging is exact and half the bytes travel.
* ``product``: average the products B·A and re-factorise to rank r by truncated SVD (FlexLoRA, Bai et al. 2024;
  HLoRA): exact for the average update up to the rank-r truncation.
"""

from server.strategies.base import AdapterStrategy, SiteResult
from server.strategies.fedavg import LoraFedAvg
from server.strategies.ffa import FfaLora
from server.strategies.product import ProductSvd

STRATEGIES: dict[str, type[AdapterStrategy]] = {"fedavg": LoraFedAvg, "ffa": FfaLora, "product": ProductSvd}

__all__ = ["STRATEGIES", "AdapterStrategy", "FfaLora", "LoraFedAvg", "ProductSvd", "SiteResult"]
