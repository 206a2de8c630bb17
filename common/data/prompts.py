"""Prompts to generate from (``fedtune generate --data``): one prompt column of a CSV, TSV or JSON Lines file.

Read and validated like training data (regular files only, bounded lines, UTF-8, one error naming file, line and
rule); other columns are ignored, so a prompt/response file can be generated from as it is.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common.data.pairs import PairSpec, _text
from common.data.readers import delimited_rows, read_records
from common.data.spec import DataFormat
from common.errors import DataValidationError


@dataclass(frozen=True)
class Prompts:
    """Non-empty prompts, in file order."""

    prompts: tuple[str, ...]
    source: str


def read_prompts_file(path: str | Path, spec: PairSpec | None = None) -> Prompts:
    """The ``spec.prompt_column`` of every record of ``path``."""
    spec = spec or PairSpec()
    path = Path(path)
    where, column, limit = str(path), spec.prompt_column, spec.max_line_bytes

    def parse(lines: Iterator[str], data_format: DataFormat) -> list[str]:
        return _from_jsonl(lines) if data_format == "jsonl" else _from_delimited(lines, data_format)

    def _from_jsonl(lines: Iterator[str]) -> list[str]:
        found = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                raise DataValidationError("not valid JSON", path=where, line=number) from None
            if not isinstance(obj, dict) or column not in obj:
                raise DataValidationError(f"missing column {column!r}", path=where, line=number)
            found.append(_text(obj[column], f"column {column!r}", where, number, limit))
        return found

    def _from_delimited(lines: Iterator[str], data_format: DataFormat) -> list[str]:
        reader = delimited_rows(lines, data_format)
        found = []
        try:
            header = [name.strip() for name in next(reader)]
            if column not in header:
                raise DataValidationError(
                    f"missing column {column!r} in the header (columns found: {header})", path=where, line=1
                )
            at = header.index(column)
            for row in reader:
                if row and any(field.strip() for field in row):
                    if len(row) != len(header):
                        raise DataValidationError(
                            f"row has {len(row)} fields but the header has {len(header)}",
                            path=where,
                            line=reader.line_num,
                        )
                    found.append(_text(row[at], f"column {column!r}", where, reader.line_num, limit))
        except csv.Error as exc:
            raise DataValidationError(f"malformed CSV: {exc}", path=where, line=reader.line_num) from None
        return found

    prompts = read_records(path, spec.format, limit, parse)
    if not prompts:
        raise DataValidationError("the file holds no prompts", path=where)
    return Prompts(prompts=tuple(prompts), source=where)
