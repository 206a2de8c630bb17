"""An immutable, validated set of labelled texts and its content fingerprint.

The fingerprint identifies a dataset for privacy accounting: the ledger is keyed by it, so it must not change when
the *same* records are stored differently. It is therefore computed over the multiset of (text, label name)
records, and is invariant to file format (CSV/TSV/JSONL), column names, row order and whether labels were written
as names or as indices. Any change to a record's text or label yields a new fingerprint.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

_FINGERPRINT_VERSION = b"fedtune-dataset-v1"


@dataclass(frozen=True)
class LabeledTexts:
    """Texts with integer class labels in ``range(len(label_names))``.

    Invariants (enforced by the readers that build it, re-checked here): ``len(texts) == len(labels)``, every label
    indexes ``label_names``, and no text is empty.
    """

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    label_names: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")
        n_classes = len(self.label_names)
        bad = next((y for y in self.labels if not 0 <= y < n_classes), None)
        if bad is not None:
            raise ValueError(f"label {bad} outside range(0, {n_classes})")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        """Number of classes of the task (not only those present in this subset)."""
        return len(self.label_names)

    def label_counts(self) -> dict[str, int]:
        """Examples per class name, every class listed (zero when absent)."""
        counts = Counter(self.labels)
        return {name: counts.get(i, 0) for i, name in enumerate(self.label_names)}

    def subset(self, indices: Sequence[int], *, source: str | None = None) -> LabeledTexts:
        """The records at ``indices`` (in that order), sharing this dataset's label set."""
        return LabeledTexts(
            texts=tuple(self.texts[i] for i in indices),
            labels=tuple(self.labels[i] for i in indices),
            label_names=self.label_names,
            source=source if source is not None else self.source,
        )

    @cached_property
    def fingerprint(self) -> str:
        """Hex sha256 of the record multiset (see the module docstring for what it is invariant to)."""
        record_digests = sorted(
            hashlib.sha256(len(text.encode()).to_bytes(8, "big") + text.encode() + b"\x00" + name.encode()).digest()
            for text, name in zip(self.texts, (self.label_names[y] for y in self.labels), strict=True)
        )
        outer = hashlib.sha256(_FINGERPRINT_VERSION)
        outer.update(len(record_digests).to_bytes(8, "big"))
        for digest in record_digests:
            outer.update(digest)
        return outer.hexdigest()
