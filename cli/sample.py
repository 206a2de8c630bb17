"""``fedtune sample-data``: write the built-in synthetic sample dataset to a JSON Lines file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from common.data.sample import DEFAULT_SAMPLE_SIZE, sample_dataset
from common.errors import ConfigError
from common.fileio import atomic_write_bytes


def sample_data(
    out: Annotated[Path, typer.Option("--out", help="JSON Lines file to write (must not exist).")],
    size: Annotated[int, typer.Option("--size", help="Number of examples.")] = DEFAULT_SAMPLE_SIZE,
    seed: Annotated[int, typer.Option("--seed", help="Generator seed.")] = 0,
) -> None:
    """Write the built-in synthetic sentiment dataset ({"text", "label"} per line, labels by name)."""
    if out.exists():
        raise ConfigError(f"{out}: file exists; choose a new --out")
    try:
        dataset = sample_dataset(size, seed=seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    lines = [
        json.dumps({"text": text, "label": dataset.label_names[label]})
        for text, label in zip(dataset.texts, dataset.labels, strict=True)
    ]
    atomic_write_bytes(out, ("\n".join(lines) + "\n").encode())
    typer.echo(f"wrote {len(dataset)} examples to {out} (fingerprint {dataset.fingerprint[:16]}...)")
