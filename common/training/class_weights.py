"""Class weights for the training loss: none, balanced (from the label counts), or given explicitly.

With rare classes a model trained on the plain mean loss can ignore them and still look accurate; weighting each
example's loss by ``N / (K * count of its class)`` (scikit-learn's "balanced" rule, King & Zeng 2001) makes every
class count as much. Under DP the counts are private: ``balanced`` takes them from a Gaussian-noised histogram
released through the ledger (:mod:`common.privacy.histogram`), never from the raw data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: A class's weight is kept within this factor of the mean weight: a class with a (noisy) count near zero must not
#: get an unbounded weight.
MAX_WEIGHT_RATIO = 20.0


@dataclass(frozen=True)
class ClassWeights:
    """``mode`` none | balanced | explicit; ``weights`` for explicit ones."""

    mode: str
    weights: tuple[float, ...] = ()

    @property
    def text(self) -> str:
        """The setting as written: none, balanced, or W1,W2,..."""
        return ",".join(f"{w:g}" for w in self.weights) if self.mode == "explicit" else self.mode


def parse_class_weights(text: str) -> ClassWeights:
    """None | balanced | W1,W2,... (positive finite numbers); ValueError naming the rule otherwise."""
    value = text.strip().lower()
    if value in ("none", "balanced"):
        return ClassWeights(value)
    try:
        weights = tuple(float(item) for item in value.split(","))
    except ValueError:
        raise ValueError(f"must be none, balanced or comma-separated positive numbers; got {text!r}") from None
    if len(weights) < 2 or not all(math.isfinite(w) and w > 0 for w in weights):
        raise ValueError(f"explicit class weights must be at least 2 finite numbers > 0; got {text!r}")
    return ClassWeights("explicit", weights)


def balanced_weights(counts: Sequence[float]) -> tuple[float, ...]:
    """``N / (K * count)`` per class from (possibly noisy) counts, bounded within MAX_WEIGHT_RATIO of their mean.

    Noisy counts may be small or negative: each is floored at 1 before dividing, and the weights are then clipped
    to [mean / MAX_WEIGHT_RATIO, mean * MAX_WEIGHT_RATIO] and renormalised to mean 1.
    """
    floored = [max(c, 1.0) for c in counts]
    total, classes = sum(floored), len(floored)
    raw = [total / (classes * c) for c in floored]
    mean = sum(raw) / classes
    clipped = [min(max(w, mean / MAX_WEIGHT_RATIO), mean * MAX_WEIGHT_RATIO) for w in raw]
    scale = classes / sum(clipped)
    return tuple(w * scale for w in clipped)
