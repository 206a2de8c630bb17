"""Classify a file with a base model and an adapter trained by fedtune: what ``fedtune predict`` runs.

The adapter is used exactly as training evaluated it: the base model, label names, pooling and token
``max_length`` recorded beside it (``fedtune_model.json``, :func:`common.model.adapter.save_adapter`; an adapter
written before ``max_length`` was recorded gets the training default), the same tokenisation
(:class:`~common.training.batches.TokenizedTexts`) and the same probabilities
(:func:`~common.training.evaluation.predict_proba`), batch by batch in file order. So predicting on a job's
evaluation file with the evaluation batch size reproduces the job's evaluation, and its accuracy in ``summary.json``.

Input: the text column of a CSV, TSV or JSON Lines file, validated like training data (one error naming the file,
the line and the rule; the whole file checked before the model is loaded). The label column is optional, per row:
a row without one (no key, ``null``, an empty string or cell) is only predicted; labelled rows (names or indices of the
adapter's labels) are also scored with the evaluation's metrics (:func:`classification_metrics`).

Output (by the suffix of the output path): ``.jsonl``, one ``{"row", "text", "label", "probabilities"}`` object per
input row; ``.csv`` and ``.tsv``, columns ``text``, ``label`` and ``p_<label name>`` per label. ``text`` is optional.
The file is written atomically, and nothing at all on error.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from common.data.fields import check_unicode, checked_text
from common.data.readers import json_objects, read_records, table_rows
from common.data.spec import DataFormat, DataSpec
from common.errors import ConfigError, DataValidationError, ModelError
from common.fileio import atomic_write_bytes
from common.model.adapter import MODEL_INFO_FILE, read_model_info
from common.model.pooling import ResolvedPooling
from common.training.config import TrainConfig

if TYPE_CHECKING:
    import numpy as np
    import torch

    from common.training.evaluation import EvalMetrics

OutputFormat = Literal["jsonl", "csv", "tsv"]
OUTPUT_SUFFIXES: Final[dict[str, OutputFormat]] = {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}
#: What an adapter written before ``max_length`` was recorded was trained with: the training default.
DEFAULT_MAX_LENGTH: Final[int] = TrainConfig.model_fields["max_length"].default
#: Batches of the evaluation's size are batched (padded) as the evaluation batched them.
DEFAULT_BATCH_SIZE: Final[int] = TrainConfig.model_fields["eval_batch_size"].default


@dataclass(frozen=True)
class ClassifierAdapter:
    """A classification adapter directory and what was recorded with it (``base_model`` may be overridden)."""

    directory: Path
    base_model: str
    labels: tuple[str, ...]
    pooling: ResolvedPooling
    max_length: int


@dataclass(frozen=True)
class TextsToPredict:
    """Texts in file order; ``labels[i]`` is the index in ``label_names`` of row i's label, or None if it has none."""

    texts: tuple[str, ...]
    labels: tuple[int | None, ...]
    label_names: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def labelled(self) -> list[int]:
        """The rows that carry a label."""
        return [i for i, label in enumerate(self.labels) if label is not None]


@dataclass(frozen=True)
class Predictions:
    """Class probabilities of every row (float64, each row sums to 1) and, if any row is labelled, its metrics.

    ``metrics`` are computed on the labelled rows only (``rows.labelled``); None when no row has a label.
    """

    rows: TextsToPredict
    probabilities: np.ndarray
    metrics: EvalMetrics | None

    @property
    def predicted(self) -> list[int]:
        """The predicted class of each row: the most probable one."""
        return [int(i) for i in self.probabilities.argmax(axis=1)]


def read_classifier_adapter(directory: Path, *, model: str | None = None) -> ClassifierAdapter:
    """The recorded settings of a classification adapter; ``model`` overrides the recorded base model.

    Refuses, naming the directory: a missing directory, one that is not a PEFT adapter, an adapter without
    fedtune's record (its labels and pooling are unknown), a generative adapter (``fedtune generate`` uses it).
    """
    if not directory.is_dir():
        raise ModelError(f"{directory}: no such adapter directory")
    if not (directory / "adapter_config.json").is_file():
        raise ModelError(f"{directory}: not a PEFT adapter directory (no adapter_config.json)")
    info = read_model_info(directory)
    where = directory / MODEL_INFO_FILE
    if not info:
        raise ModelError(f"{directory}: no {MODEL_INFO_FILE}; predicting needs the labels and pooling fedtune records")
    task = info.get("task", "classify")
    if task == "generate":
        raise ModelError(
            f"{directory}: a generative adapter (task 'generate'); use `fedtune generate --adapter {directory}`"
        )
    if task != "classify":
        raise ModelError(f"{where}: unknown task {task!r}")
    labels = info.get("labels")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(n, str) and n for n in labels):
        raise ModelError(f"{where}: 'labels' must be a list of at least 2 label names; got {labels!r}")
    pooling = info.get("pooling", "cls")
    if pooling not in ("cls", "mean"):
        raise ModelError(f"{where}: unknown pooling {pooling!r}")
    max_length = info.get("max_length", DEFAULT_MAX_LENGTH)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ModelError(f"{where}: 'max_length' must be an integer >= 2; got {max_length!r}")
    base = model or info.get("base_model")
    if not isinstance(base, str) or not base:
        raise ModelError(f"{where}: no base model recorded; give one with --model")
    return ClassifierAdapter(directory, base, tuple(labels), pooling, max_length)


def read_texts_file(path: str | Path, spec: DataSpec, label_names: tuple[str, ...]) -> TextsToPredict:
    """The ``spec.text_column`` of every record of ``path`` and, where present, its label in ``label_names``."""
    path = Path(path)
    where = str(path)

    def parse(lines: Iterator[str], data_format: DataFormat) -> list[tuple[str, int | None]]:
        rows = (
            _jsonl_rows(lines, where, spec)
            if data_format == "jsonl"
            else _delimited_rows(lines, where, spec, data_format)
        )
        return [(text, _label_index(label, label_names, where, line)) for line, text, label in rows]

    records = read_records(path, spec.format, spec.max_line_bytes, parse)
    if not records:
        raise DataValidationError("the file holds a header but no records", path=where)
    texts, labels = zip(*records, strict=True)
    return TextsToPredict(texts=texts, labels=labels, label_names=label_names, source=where)


def predict_texts(
    adapter: ClassifierAdapter,
    rows: TextsToPredict,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device,
    progress: Callable[[int, int], None] | None = None,
) -> Predictions:
    """Probabilities of every row by base + adapter, and metrics on the labelled rows; ``progress(done, total)``."""
    import numpy as np

    from common.data.dataset import LabeledTexts
    from common.model.adapter import load_adapter
    from common.model.loading import load_base_classifier, load_tokenizer, resolve_base_model
    from common.training.batches import TokenizedTexts
    from common.training.evaluation import classification_metrics, predict_proba

    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1; got {batch_size}")
    if rows.label_names != adapter.labels:
        raise ValueError(f"rows were read for the labels {rows.label_names}, the adapter has {adapter.labels}")
    ref = resolve_base_model(adapter.base_model)
    tokenizer = load_tokenizer(ref)
    model = load_adapter(load_base_classifier(ref, adapter.labels, pooling=adapter.pooling), adapter.directory)
    chunks = []
    for start in range(0, len(rows), batch_size):
        texts = rows.texts[start : start + batch_size]
        # One batch at a time, for the progress bar; batches are those of predict_proba over the whole file. The
        # labels are placeholders that predict_proba never reads (rows may have none).
        batch = LabeledTexts(texts=texts, labels=(0,) * len(texts), label_names=adapter.labels, source=rows.source)
        data = TokenizedTexts(batch, tokenizer, max_length=adapter.max_length)
        chunks.append(predict_proba(model, data, batch_size=batch_size, device=device))
        if progress is not None:
            progress(start + len(texts), len(rows))
    probabilities = np.concatenate(chunks)
    labelled = rows.labelled
    metrics = None
    if labelled:
        gold = np.array([rows.labels[i] for i in labelled], dtype=np.int64)
        metrics = classification_metrics(gold, probabilities[labelled])
    return Predictions(rows=rows, probabilities=probabilities, metrics=metrics)


def output_format(path: Path) -> OutputFormat:
    """The format an output path asks for by its suffix; any other suffix is a ConfigError."""
    found = OUTPUT_SUFFIXES.get(path.suffix.lower())
    if found is None:
        known = ", ".join(OUTPUT_SUFFIXES)
        raise ConfigError(f"--out {path}: cannot tell the output format from the suffix {path.suffix!r} (use {known})")
    if path.is_dir():
        raise ConfigError(f"--out {path}: is a directory; give a file path")
    return found


def check_output(rows: TextsToPredict, fmt: OutputFormat, *, include_text: bool) -> None:
    """Refuse, before predicting, what the output format cannot hold: a TSV field with a tab or a line break."""
    if fmt != "tsv":
        return
    fields = [*(f"p_{name}" for name in rows.label_names), *(rows.texts if include_text else ())]
    bad = next((i for i, field in enumerate(fields) if _breaks_tsv(field)), None)
    if bad is not None:
        what = f"label {rows.label_names[bad]!r}" if bad < len(rows.label_names) else "a text"
        row = "" if bad < len(rows.label_names) else f" (row {bad - len(rows.label_names)})"
        raise ConfigError(
            f"{rows.source}: {what}{row} holds a tab or a line break, which a TSV field cannot; "
            "write .jsonl or .csv, or leave the texts out"
        )


def write_predictions(predictions: Predictions, out: Path, *, include_text: bool = True) -> OutputFormat:
    """Write ``predictions`` to ``out`` (format by suffix, see the module docstring), atomically."""
    fmt = output_format(out)
    check_output(predictions.rows, fmt, include_text=include_text)
    atomic_write_bytes(out, render_predictions(predictions, fmt, include_text=include_text).encode())
    return fmt


def render_predictions(predictions: Predictions, fmt: OutputFormat, *, include_text: bool) -> str:
    """The output file's content; probabilities are written at full float precision (``repr``)."""
    rows, names = predictions.rows, predictions.rows.label_names
    table = zip(rows.texts, predictions.predicted, predictions.probabilities.tolist(), strict=True)
    if fmt == "jsonl":
        lines = []
        for row, (text, label, proba) in enumerate(table):
            record: dict[str, Any] = {"row": row, **({"text": text} if include_text else {})}
            record.update(label=names[label], probabilities=dict(zip(names, proba, strict=True)))
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        return "".join(lines)
    header = [*(["text"] if include_text else []), "label", *(f"p_{name}" for name in names)]
    body = [[*([text] if include_text else []), names[label], *map(repr, proba)] for text, label, proba in table]
    if fmt == "tsv":  # written literally, as fedtune's TSV reader reads (check_output refused what cannot be)
        return "".join("\t".join(fields) + "\n" for fields in [header, *body])
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *body])
    return buffer.getvalue()


def _breaks_tsv(field: str) -> bool:
    return any(char in field for char in "\t\n\r")


#: One row as read: (line, text, raw label or None).
_Row = tuple[int, str, object]


def _jsonl_rows(lines: Iterable[str], where: str, spec: DataSpec) -> list[_Row]:
    rows: list[_Row] = []
    column, limit = spec.text_column, spec.max_line_bytes
    for number, obj in json_objects(lines, where):
        if column not in obj:
            raise DataValidationError(
                f"missing column {column!r} (this line has {sorted(obj)})", path=where, line=number
            )
        text = checked_text(obj[column], f"column {column!r}", where, number, limit)
        rows.append((number, text, obj.get(spec.label_column)))
    return rows


def _delimited_rows(lines: Iterator[str], where: str, spec: DataSpec, data_format: DataFormat) -> list[_Row]:
    header, table = table_rows(lines, data_format, where, (spec.text_column,))
    text_at = header.index(spec.text_column)
    label_at = header.index(spec.label_column) if spec.label_column in header else None
    rows: list[_Row] = []
    for number, row in table:
        text = checked_text(row[text_at], f"column {spec.text_column!r}", where, number, spec.max_line_bytes)
        label = row[label_at].strip() if label_at is not None else ""
        rows.append((number, text, label or None))
    return rows


def _label_index(label: object, names: tuple[str, ...], where: str, line: int) -> int | None:
    """A row's label as an index in ``names`` (a name, or an index as an integer or its digits); None: no label."""
    if label is None or (isinstance(label, str) and not label.strip()):
        return None
    if isinstance(label, bool) or not isinstance(label, str | int):
        raise DataValidationError(
            f"label must be a name (string) or an index (integer); got {label!r}", path=where, line=line
        )
    if isinstance(label, str):
        check_unicode(label, "the label", where, line)
        if label in names:
            return names.index(label)
    text = str(label).strip()
    digits = text.lstrip("+-")
    if digits.isdigit() and digits.isascii() and 0 <= int(text) < len(names):
        return int(text)
    raise DataValidationError(
        f"label {label!r} is not one of the adapter's labels {list(names)} (names, or indices 0..{len(names) - 1})",
        path=where,
        line=line,
    )
