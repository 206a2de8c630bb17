"""A record's identity in a dataset: its normalised text; duplicates of it are one record.

DP-SGD's guarantee is per sampled example. A text that appears k times in a training set is sampled k times as
often, so its privacy loss is that of a group of k (Dwork & Roth 2014, section 2.3), not of one record, and per-record
accounting (:mod:`common.privacy.exposure`) would understate it. Training sets are therefore deduplicated before
training: the first occurrence of each normalised text is kept, the others are dropped and counted. Normalising
(Unicode NFKC, whitespace runs collapsed, ends stripped) makes the same text saved by another tool the same record.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from common.data.dataset import LabeledTexts


def normalise(text: str) -> str:
    """The form a record's identity is computed from: NFKC, whitespace runs collapsed, ends stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def first_occurrences(texts: Sequence[str]) -> list[int]:
    """The indices of the first text of each normalised form, in order: what deduplication keeps."""
    seen: set[str] = set()
    keep = []
    for index, text in enumerate(texts):
        key = normalise(text)
        if key not in seen:
            seen.add(key)
            keep.append(index)
    return keep


def deduplicate(dataset: LabeledTexts) -> tuple[LabeledTexts, int]:
    """``dataset`` with one example per normalised text (the first), and how many duplicates were dropped."""
    keep = first_occurrences(dataset.texts)
    if len(keep) == len(dataset):
        return dataset, 0
    return dataset.subset(keep), len(dataset) - len(keep)
