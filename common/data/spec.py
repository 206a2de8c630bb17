"""How to read a labelled text file: format, column names, label set and size limits."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

DataFormat = Literal["auto", "csv", "tsv", "jsonl"]

#: A line longer than this is treated as corrupt input rather than a text to classify.
DEFAULT_MAX_LINE_BYTES = 64 * 1024


class DataSpec(BaseModel):
    """Frozen description of a data file's layout.

    ``labels`` declares the label set: class ``i`` is ``labels[i]``. Files may then write a label either as its
    name or as its integer index. When ``labels`` is ``None`` the reader looks for a ``labels.json`` (a JSON list of
    names) beside the data file, and otherwise infers the set from the training file (sorted names, or
    ``0..max`` for integer labels).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: DataFormat = "auto"
    text_column: str = Field(default="text", min_length=1)
    label_column: str = Field(default="label", min_length=1)
    labels: tuple[str, ...] | None = None
    max_line_bytes: int = Field(default=DEFAULT_MAX_LINE_BYTES, gt=0)

    @field_validator("labels")
    @classmethod
    def _labels_distinct(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if len(value) < 2:
            raise ValueError(f"a classification task needs at least 2 labels; got {list(value)}")
        if any(not name.strip() for name in value):
            raise ValueError(f"label names must be non-empty; got {list(value)}")
        if len(set(value)) != len(value):
            raise ValueError(f"label names must be distinct; got {list(value)}")
        return value
