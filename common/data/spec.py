"""How to read a labelled text file: format, column names, label set and size limits."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

DataFormat = Literal["auto", "csv", "tsv", "jsonl"]

#: A line longer than this is treated as corrupt input rather than a text to classify.
DEFAULT_MAX_LINE_BYTES = 64 * 1024
#: The most a caller may allow per line: lines are held in memory one at a time, and a record is at most a line.
MAX_LINE_BYTES_LIMIT = 64 * 1024 * 1024


def utf8_problem(value: str) -> str | None:
    """Why ``value`` is not valid Unicode text, or None if it is.

    On Linux, Python decodes command-line bytes that are not UTF-8 into lone surrogates ("surrogateescape"): such a
    string looks fine until it is written to a file, hashed or compared with a label read from a UTF-8 file.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"the lone surrogate U+{code:04X}"
        return f"must be valid UTF-8 text ({what} at position {exc.start} is not)"
    return None


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
    max_line_bytes: int = Field(default=DEFAULT_MAX_LINE_BYTES, gt=0, le=MAX_LINE_BYTES_LIMIT)

    @field_validator("text_column", "label_column", mode="before")
    @classmethod
    def _utf8_column(cls, value: Any) -> Any:
        problem = utf8_problem(value) if isinstance(value, str) else None
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("labels")
    @classmethod
    def _labels_distinct(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        problem = next((p for p in map(utf8_problem, value) if p is not None), None)
        if problem is not None:
            raise ValueError(f"label names {problem}")
        if len(value) < 2:
            raise ValueError(f"a classification task needs at least 2 labels; got {list(value)}")
        if any(not name.strip() for name in value):
            raise ValueError(f"label names must be non-empty; got {list(value)}")
        if len(set(value)) != len(value):
            raise ValueError(f"label names must be distinct; got {list(value)}")
        return value
