"""Test helpers importable from any test module (``from tests.helpers import ...``)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from common.privacy.ledger import DatasetRef

#: The real datasets live beside the repository (../shared/data); tests that need them skip when absent.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def build_tiny_model(directory: Path, *, hidden: int = 32, layers: int = 2, num_labels: int = 2) -> Path:
    """Save a randomly initialised 2-layer BERT and a word-level WordPiece tokenizer covering the sample data."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from common.data.sample import sample_dataset

    words = sorted({w for text in sample_dataset(400).texts for w in re.findall(r"\w+|[^\w\s]", text.lower())})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 ignores vocab_file= (every word would be [UNK]); vocab= reads the file.
    tokenizer = BertTokenizerFast(vocab=str(directory / "vocab.txt"), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=num_labels,
    )
    torch.manual_seed(1234)
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def synthetic_dataset(name: str, size: int, *, tag: str | None = None, start: int = 0) -> DatasetRef:
    """A DatasetRef of ``size`` synthetic record ids (records ``tag:start`` .. ``tag:start+size-1``).

    Two datasets with the same tag share the records their ranges share: growing a dataset is a larger range.
    """
    from common.privacy.ledger import DatasetRef
    from common.privacy.record_ids import as_set

    tag = tag if tag is not None else name
    ids = [hashlib.sha256(f"{tag}:{i}".encode()).digest()[:16] for i in range(start, start + size)]
    return DatasetRef(name, as_set(ids))


def run_cli(args: list[str]) -> int:
    """Run ``fedtune ARGS`` in this process; its exit code (0 when it returns)."""
    from cli.app import main

    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
