"""What the trainer trains: how a logical batch is chunked and how a chunk's loss is computed.

:func:`common.training.trainer.train_adapter` owns the DP-SGD mechanics (sampling, clipping, noise, accounting) and
asks a :class:`TrainTask` only two things, so the privacy machinery is the same for every task:

* :class:`ClassificationTask` (the default): sequence classification, ``model(**inputs).logits`` and a per-example
  cross-entropy; chunks of at most ``physical_batch_size`` examples grouped by length;
* :class:`CausalLmTask`: generative fine-tuning of a causal LM, :func:`common.training.causal_loss.causal_lm_loss`
  on the response tokens; chunks bounded by padded tokens (:func:`common.training.causal_batches.token_chunks`).

Invariant every task must keep (DP-SGD relies on it): a chunk's loss is the MEAN over its examples of terms that each
depend on one example only. Opacus (``loss_reduction="mean"``) rescales by the chunk size to recover per-example
gradients, and the trainer weights chunks by their share of the logical batch on the non-private path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from common.training.batches import physical_chunks
from common.training.causal_batches import token_chunks
from common.training.causal_loss import causal_lm_loss


class TrainData(Protocol):
    """Tokenised training examples (``TokenizedTexts``, ``TokenizedPairs``): indexable batches and token lengths."""

    @property
    def lengths(self) -> Sequence[int]:
        """Each example's token count (used to group examples of similar length)."""
        ...

    def __len__(self) -> int: ...

    def batch(self, indices: Sequence[int], device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Model inputs and labels for ``indices`` (non-empty), on ``device``."""
        ...


class TrainTask(Protocol):
    """How to split a logical batch into physical chunks and compute a chunk's (mean per-example) loss."""

    def chunks(self, logical: list[int], data: TrainData, physical_batch_size: int) -> list[list[int]]:
        """Physical chunks covering ``logical`` exactly once; an empty logical batch is one empty chunk."""
        ...

    def loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """The chunk's loss: the mean over its examples of per-example terms."""
        ...


@dataclass(frozen=True)
class ClassificationTask:
    """Sequence classification: ``loss_fn(model(**inputs).logits, labels)`` (``loss_fn`` a per-example mean)."""

    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def chunks(self, logical: list[int], data: TrainData, physical_batch_size: int) -> list[list[int]]:
        """At most ``physical_batch_size`` examples a chunk, grouped by length."""
        return physical_chunks(logical, physical_batch_size, data.lengths)

    def loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """The classifier's loss on the chunk."""
        return self.loss_fn(model(**inputs).logits, labels)


@dataclass(frozen=True)
class CausalLmTask:
    """Generative fine-tuning: next-token loss on response tokens, per example, then averaged.

    ``max_tokens`` bounds a chunk's padded size (rows times its longest example), what a causal LM's activations and
    ``(rows, tokens, vocab)`` logits grow with; None bounds only the rows (``physical_batch_size``).
    """

    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1; got {self.max_tokens}")

    def chunks(self, logical: list[int], data: TrainData, physical_batch_size: int) -> list[list[int]]:
        """Length-bucketed chunks of at most ``physical_batch_size`` rows and ``max_tokens`` padded tokens."""
        if self.max_tokens is None:
            return physical_chunks(logical, physical_batch_size, data.lengths)
        return token_chunks(logical, data.lengths, self.max_tokens, max_examples=physical_batch_size)

    def loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """:func:`~common.training.causal_loss.causal_lm_loss` of the model's logits (no key/value cache)."""
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        return causal_lm_loss(outputs.logits, labels)
