"""Resolve and load a Hugging Face sequence-classification base model and its tokenizer.

A model is named by a hub id or a local directory; the built-in aliases resolve to the verified offline MiniLM
(:mod:`common.model.builtin`). Loading failures become :class:`~common.errors.ModelError` naming the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import ModelError
from common.model.builtin import BUILTIN_ALIASES, BUILTIN_MODEL_ID, builtin_model_dir
from common.model.mean_pooler import apply_pooling
from common.model.pooling import Pooling, resolve_pooling

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class BaseModelRef:
    """A resolved base model: ``name`` is what adapters record, ``location`` what ``from_pretrained`` reads."""

    name: str
    location: str


def resolve_base_model(name_or_path: str) -> BaseModelRef:
    """Map the user's ``--model`` value to a loadable location (verifying the built-in model's weights)."""
    if name_or_path in BUILTIN_ALIASES:
        return BaseModelRef(name=BUILTIN_MODEL_ID, location=str(builtin_model_dir()))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a Hugging Face model directory (no config.json)")
        return BaseModelRef(name=str(path.resolve()), location=str(path.resolve()))
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelError(f"{name_or_path}: no such model directory")
    return BaseModelRef(name=name_or_path, location=name_or_path)


def load_tokenizer(ref: BaseModelRef) -> PreTrainedTokenizerBase:
    """The base model's tokenizer (fast when available)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(ref.location)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer of {ref.name!r}: {_first_line(exc)}") from exc


def load_base_classifier(
    ref: BaseModelRef, label_names: tuple[str, ...], *, pooling: Pooling = "auto"
) -> PreTrainedModel:
    """The base model with a freshly initialised classification head for ``label_names``.

    ``pooling`` is resolved against the model (see :mod:`common.model.pooling`) and recorded on its config as
    ``fedtune_pooling``. The head's initialisation draws from torch's global generator: seed it first for
    reproducible runs.
    """
    from transformers import AutoModelForSequenceClassification

    # The "newly initialized classifier weights" notice is expected here (we train that head).
    try:
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(
                ref.location,
                num_labels=len(label_names),
                id2label=dict(enumerate(label_names)),
                label2id={name: i for i, name in enumerate(label_names)},
            )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the base model {ref.name!r}: {_first_line(exc)}") from exc
    resolved = resolve_pooling(pooling, ref.location)
    apply_pooling(model, resolved)
    model.config.fedtune_pooling = resolved
    return model


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' info logs and per-tensor progress bars for one call (warnings stay on)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bar_was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar_was_enabled:
            hf_logging.enable_progress_bar()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
