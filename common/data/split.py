"""Seeded train/evaluation splits (stratified by label when every class can be split)."""

from __future__ import annotations

from collections import Counter

from common.data.dataset import LabeledTexts
from common.errors import ConfigError


def train_eval_split(dataset: LabeledTexts, *, eval_fraction: float, seed: int) -> tuple[LabeledTexts, LabeledTexts]:
    """Split into (train, eval), deterministically for a given ``seed``.

    Stratifies by label when each class has at least two examples, so small or skewed datasets keep their class
    balance in both parts; falls back to a plain shuffled split otherwise.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ConfigError(f"eval fraction must be in (0, 1); got {eval_fraction}")
    n_eval = round(len(dataset) * eval_fraction)
    if n_eval < 1 or n_eval >= len(dataset):
        raise ConfigError(
            f"an eval fraction of {eval_fraction} of {len(dataset)} examples leaves an empty split; "
            "use more data or a separate evaluation file"
        )
    from sklearn.model_selection import train_test_split

    counts = Counter(dataset.labels)
    stratify = (
        list(dataset.labels)
        if min(counts.values()) >= 2 and n_eval >= len(counts) and len(dataset) - n_eval >= len(counts)
        else None
    )
    train_idx, eval_idx = train_test_split(
        list(range(len(dataset))), test_size=n_eval, random_state=seed, shuffle=True, stratify=stratify
    )
    return (
        dataset.subset(sorted(train_idx), source=f"{dataset.source} (train split)"),
        dataset.subset(sorted(eval_idx), source=f"{dataset.source} (eval split)"),
    )
