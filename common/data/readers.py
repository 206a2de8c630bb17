"""Read labelled text from CSV, TSV or JSON Lines, validating everything before anything is used.

Every rule broken raises :class:`~common.errors.DataValidationError` naming the file, the line (1-based, as an
editor shows it) and the rule, so a data owner can fix the file from the message alone. The whole file is read and
checked before a dataset is returned: a caller never sees a partially read file.

The file is opened once, only if it is a regular file, and read line by line with each line bounded by
``DataSpec.max_line_bytes`` (:mod:`common.data.files`): a device, a FIFO, ``/proc/self/mem`` or a file without
newlines is one error, never a hang, a traceback or a full memory.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from common.data.dataset import LabeledTexts
from common.data.fields import check_unicode
from common.data.files import FileAccessError, bounded_lines, open_regular_file, read_bounded
from common.data.spec import DataFormat, DataSpec
from common.errors import DataValidationError

if TYPE_CHECKING:
    from _csv import Reader

RecordT = TypeVar("RecordT")

_SUFFIX_FORMATS: dict[str, DataFormat] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_INT_LABEL = re.compile(r"[+-]?\d+")
LABELS_SIDECAR = "labels.json"
#: A label list is small; a larger ``labels.json`` is a wrong or corrupt file, refused without reading it all.
MAX_SIDECAR_BYTES = 1024 * 1024


@dataclass(frozen=True)
class _RawRecord:
    line: int
    text: str
    label: str | int


def read_labeled_file(
    path: str | Path, spec: DataSpec | None = None, *, label_names: tuple[str, ...] | None = None
) -> LabeledTexts:
    """Read and validate one labelled text file.

    ``label_names`` overrides ``spec.labels`` (used to read an evaluation file against the training file's label
    set, so that a label unknown to the model is an error instead of a silent new class).
    """
    spec = spec or DataSpec()
    path = Path(path)
    where = str(path)

    def parse(lines: Iterator[str], data_format: DataFormat) -> list[_RawRecord]:
        if data_format == "jsonl":
            return _parse_jsonl(lines, where, spec)
        return _parse_delimited(lines, where, spec, data_format)

    records = read_records(path, spec.format, spec.max_line_bytes, parse)
    if not records:
        raise DataValidationError("the file holds a header but no records", path=where)
    declared = label_names if label_names is not None else spec.labels
    if declared is None:
        declared = _read_sidecar_labels(path)
    labels, names = _resolve_labels(records, declared, where)
    return LabeledTexts(texts=tuple(r.text for r in records), labels=labels, label_names=names, source=where)


def read_records(
    path: Path,
    requested: DataFormat,
    max_line_bytes: int,
    parse: Callable[[Iterator[str], DataFormat], list[RecordT]],
) -> list[RecordT]:
    """``parse`` of the decoded lines of ``path`` (from its first content line) in its detected format.

    The one way every data file is opened: a regular file only, each line bounded by ``max_line_bytes``, UTF-8;
    whatever goes wrong opening or reading it is a DataValidationError naming the file (and line).
    """
    where = str(path)
    try:
        with open_regular_file(path) as handle:
            data_format = _detect_format(path, requested)
            return parse(_from_first_content(_decoded_lines(handle, where, max_line_bytes), where), data_format)
    except FileAccessError as exc:
        raise DataValidationError(exc.reason, path=where, line=exc.line) from None


def delimited_rows(lines: Iterable[str], data_format: DataFormat) -> Reader:
    """A csv reader over ``lines`` for a CSV or TSV file.

    TSV files (e.g. GLUE) do not quote fields, and their texts contain bare quotes: read them literally. A quoted
    CSV field may span lines: the reader pulls as many (each bounded) as the record needs. ``line_num`` of the
    returned reader is the line the current row ended on.
    """
    stream = _universal_lines(lines)
    if data_format == "tsv":
        return csv.reader(stream, delimiter="\t", quoting=csv.QUOTE_NONE, strict=True)
    return csv.reader(stream, delimiter=",", quoting=csv.QUOTE_MINIMAL, strict=True)


def json_objects(lines: Iterable[str], where: str) -> Iterator[tuple[int, dict[str, object]]]:
    """A JSON Lines file's non-blank lines as ``(line number, object)``, lazily.

    One rule for every JSON Lines reader: a line that is not valid JSON (or nests too deeply to parse) or is not a
    JSON object is a DataValidationError naming the file and line.
    """
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataValidationError(f"not valid JSON: {exc.msg}", path=where, line=number) from None
        except RecursionError:
            raise DataValidationError("not valid JSON: nested too deeply", path=where, line=number) from None
        if not isinstance(obj, dict):
            raise DataValidationError(
                f"each line must be a JSON object; got {type(obj).__name__}", path=where, line=number
            )
        yield number, obj


def table_rows(
    lines: Iterable[str],
    data_format: DataFormat,
    where: str,
    required: Iterable[str],
    *,
    hint: Callable[[list[str]], str] | None = None,
) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """A CSV/TSV file's header (names stripped) and its non-blank rows as ``(line number, fields)``.

    One rule for every delimited reader: a header without a ``required`` column (``hint(header)`` appended to the
    message),
    a malformed header or row, or a row whose field count differs from the header's is a DataValidationError naming
    the file and line; rows of nothing but blanks are skipped. The rows are read lazily, as they are iterated.
    """
    reader = delimited_rows(lines, data_format)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        header = []
    except csv.Error as exc:
        raise DataValidationError(f"malformed header: {exc}", path=where, line=1) from None
    for column in required:
        if column not in header:
            raise DataValidationError(
                f"missing column {column!r} in the header (columns found: {header}){hint(header) if hint else ''}",
                path=where,
                line=1,
            )

    def rows() -> Iterator[tuple[int, list[str]]]:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataValidationError(f"malformed row: {exc}", path=where, line=reader.line_num) from None
            number = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                raise DataValidationError(
                    f"row has {len(row)} fields but the header has {len(header)}", path=where, line=number
                )
            yield number, row

    return header, rows()


def _decoded_lines(handle: BinaryIO, where: str, max_line_bytes: int) -> Iterator[str]:
    """The file's lines as text (line endings kept), a UTF-8 byte order mark at the start dropped.

    Decoding line by line is exact for UTF-8: the newline byte never occurs inside a multi-byte character.
    """
    offset = 0
    for number, raw in enumerate(bounded_lines(handle, max_line_bytes=max_line_bytes), start=1):
        start = len(codecs.BOM_UTF8) if number == 1 and raw.startswith(codecs.BOM_UTF8) else 0
        try:
            yield raw[start:].decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = start + exc.start
            raise DataValidationError(
                f"bytes are not valid UTF-8 (byte 0x{raw[bad]:02x} at offset {offset + bad}); save the file as UTF-8",
                path=where,
                line=number,
            ) from None
        offset += len(raw)


def _from_first_content(lines: Iterator[str], where: str) -> Iterator[str]:
    """``lines`` unchanged, once it is known that one of them is not blank (else: the file is empty)."""
    blank: list[str] = []
    for line in lines:
        blank.append(line)
        if line.strip():
            return itertools.chain(blank, lines)
    raise DataValidationError("the file is empty: it holds no records", path=where)


def _detect_format(path: Path, requested: DataFormat) -> DataFormat:
    if requested != "auto":
        return requested
    detected = _SUFFIX_FORMATS.get(path.suffix.lower())
    if detected is None:
        known = ", ".join(sorted(_SUFFIX_FORMATS))
        raise DataValidationError(
            f"cannot tell the format from the suffix {path.suffix!r} (known: {known}); pass the format explicitly",
            path=str(path),
        )
    return detected


def _checked_text(value: object, line: int, where: str, spec: DataSpec) -> str:
    if not isinstance(value, str):
        raise DataValidationError(
            f"column {spec.text_column!r} must be a string; got {type(value).__name__} {value!r}",
            path=where,
            line=line,
        )
    if not value.strip():
        raise DataValidationError(f"column {spec.text_column!r} is empty", path=where, line=line)
    check_unicode(value, f"column {spec.text_column!r}", where, line)
    if len(value.encode()) > spec.max_line_bytes:
        raise DataValidationError(f"text is over the limit of {spec.max_line_bytes:,} bytes", path=where, line=line)
    return value


def _parse_jsonl(lines: Iterable[str], where: str, spec: DataSpec) -> list[_RawRecord]:
    records = []
    for number, obj in json_objects(lines, where):
        for column in (spec.text_column, spec.label_column):
            if column not in obj:
                raise DataValidationError(
                    f"missing column {column!r} (this line has {sorted(obj)})", path=where, line=number
                )
        label = obj[spec.label_column]
        if isinstance(label, bool) or not isinstance(label, str | int):
            raise DataValidationError(
                f"label must be a name (string) or an index (integer); got {label!r}", path=where, line=number
            )
        if isinstance(label, str):
            check_unicode(label, f"column {spec.label_column!r}", where, number)
        records.append(_RawRecord(number, _checked_text(obj[spec.text_column], number, where, spec), label))
    return records


def _universal_lines(lines: Iterable[str]) -> Iterator[str]:
    """``lines`` split at a lone carriage return too, as ``open(newline="")`` splits: what the csv module expects."""
    for line in lines:
        if "\r" in line.rstrip("\r\n"):
            yield from io.StringIO(line, newline="")
        else:
            yield line


def _parse_delimited(lines: Iterator[str], where: str, spec: DataSpec, data_format: DataFormat) -> list[_RawRecord]:
    header, rows = table_rows(lines, data_format, where, (spec.text_column, spec.label_column))
    text_at, label_at = header.index(spec.text_column), header.index(spec.label_column)
    records = []
    for number, row in rows:
        label = row[label_at].strip()
        if not label:
            raise DataValidationError(f"column {spec.label_column!r} is empty", path=where, line=number)
        records.append(_RawRecord(number, _checked_text(row[text_at], number, where, spec), label))
    return records


def _read_sidecar_labels(path: Path) -> tuple[str, ...] | None:
    sidecar = path.parent / LABELS_SIDECAR
    if not sidecar.exists():
        return None
    try:
        names = json.loads(read_bounded(sidecar, max_bytes=MAX_SIDECAR_BYTES).decode("utf-8"))
    except FileAccessError as exc:
        raise DataValidationError(exc.reason, path=str(sidecar)) from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DataValidationError(f"not a JSON list of label names: {exc}", path=str(sidecar)) from None
    if (
        not isinstance(names, list)
        or len(names) < 2
        or not all(isinstance(n, str) and n.strip() for n in names)
        or len(set(names)) != len(names)
    ):
        raise DataValidationError(
            f"must be a JSON list of at least 2 distinct, non-empty label names; got {names!r}", path=str(sidecar)
        )
    for name in names:
        check_unicode(name, "a label name", str(sidecar), None)
    return tuple(names)


def _as_index(label: str | int) -> int | None:
    if isinstance(label, int):
        return label
    return int(label) if _INT_LABEL.fullmatch(label) else None


def _resolve_labels(
    records: list[_RawRecord], declared: tuple[str, ...] | None, where: str
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    if declared is not None:
        position = {name: i for i, name in enumerate(declared)}
        labels = []
        for record in records:
            if isinstance(record.label, str) and record.label in position:
                labels.append(position[record.label])
                continue
            index = _as_index(record.label)
            if index is None or not 0 <= index < len(declared):
                raise DataValidationError(
                    f"label {record.label!r} is outside the label set {list(declared)} "
                    f"(names, or indices 0..{len(declared) - 1})",
                    path=where,
                    line=record.line,
                )
            labels.append(index)
        return tuple(labels), declared

    indices = [_as_index(r.label) for r in records]
    if all(i is not None for i in indices):
        negative = next((r for r, i in zip(records, indices, strict=True) if i is not None and i < 0), None)
        if negative is not None:
            raise DataValidationError(
                f"label {negative.label!r} is negative; integer labels are class indices 0, 1, ...",
                path=where,
                line=negative.line,
            )
        int_labels = tuple(i for i in indices if i is not None)
        names = tuple(str(i) for i in range(max(int_labels) + 1))
    elif any(i is not None for i in indices):
        first_int = next(r for r, i in zip(records, indices, strict=True) if i is not None)
        raise DataValidationError(
            f"label {first_int.label!r} is an integer but other labels are names; use one kind, "
            "or declare the label set",
            path=where,
            line=first_int.line,
        )
    else:
        names = tuple(sorted({str(r.label) for r in records}))
        position = {name: i for i, name in enumerate(names)}
        int_labels = tuple(position[str(r.label)] for r in records)
    if len(set(int_labels)) < 2:
        raise DataValidationError(
            f"only one class ({names[int_labels[0]]!r}) occurs; a classifier needs at least 2", path=where
        )
    return int_labels, names
