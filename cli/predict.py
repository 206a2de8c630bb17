"""``fedtune predict``: label every text of a file with a base classifier and an adapter trained by fedtune."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli import options as opt
from cli.display import console
from common.training.config import TrainConfig


def predict(
    adapter: Annotated[Path, typer.Option("--adapter", help="An adapter directory (OUT/adapter of `fedtune train`).")],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="CSV/TSV/JSON Lines file of texts. Rows that carry a label (names or indices of the adapter's "
            "labels) are also scored: accuracy and macro F1 are printed.",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="File to write, format by suffix: .jsonl (one {row, text, label, probabilities} object per row), "
            ".csv or .tsv (columns text, label, p_<label> per label).",
        ),
    ],
    text_column: opt.TextColumnOpt = opt.DATA_DEFAULTS.text_column,
    label_column: Annotated[
        str, typer.Option("--label-column", help="Column/key of the labels, if the file has them (optional).")
    ] = opt.DATA_DEFAULTS.label_column,
    fmt: opt.FormatOpt = opt.DATA_DEFAULTS.format,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            min=1,
            help="Texts classified at once (default: the evaluation's, so its batches and results are reproduced).",
        ),
    ] = TrainConfig.model_fields["eval_batch_size"].default,
    device: opt.DeviceOpt = "auto",
    model: Annotated[
        str | None, typer.Option("--model", help="Base model (hub id or directory). Default: the adapter's record.")
    ] = None,
    no_text: Annotated[bool, typer.Option("--no-text", help="Leave the texts out of the output file.")] = False,
) -> None:
    """Predicted label and per-label probabilities for every row of --data, with the adapter's recorded settings."""
    from rich.progress import Progress

    from common.errors import ConfigError
    from common.inference.predict import (
        check_output,
        output_format,
        predict_texts,
        read_classifier_adapter,
        read_texts_file,
        write_predictions,
    )
    from common.training.device import resolve_device

    opt.require_utf8({"--data": data, "--out": out, "--adapter": adapter})
    spec = opt.data_spec(fmt=fmt, text_column=text_column, label_column=label_column, labels=None)
    fmt_out = output_format(out)
    if out.resolve() == data.resolve():
        raise ConfigError(f"--out {out}: is the --data file; write the predictions elsewhere")
    recorded = read_classifier_adapter(adapter, model=model)
    rows = read_texts_file(data, spec, recorded.labels)
    check_output(rows, fmt_out, include_text=not no_text)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("predicting", total=len(rows))
        predictions = predict_texts(
            recorded,
            rows,
            batch_size=batch_size,
            device=resolve_device(device),
            progress=lambda done, _total: bar.update(task, completed=done),
        )
    write_predictions(predictions, out, include_text=not no_text)
    console.print(f"{len(rows)} prediction(s) written to {out}")
    metrics = predictions.metrics
    if metrics is not None:
        unlabelled = len(rows) - metrics.num_examples
        rest = f" ({unlabelled} row(s) without a label not scored)" if unlabelled else ""
        console.print(
            f"accuracy {metrics.accuracy:.4f}, macro F1 {metrics.macro_f1:.4f} on {metrics.num_examples} "
            f"labelled row(s){rest}",
            highlight=False,
        )
