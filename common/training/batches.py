"""Tokenised examples, batch index samplers and the step plan of a training job.

DP-SGD's privacy analysis assumes Poisson sampling: at every step each example joins the batch independently with
probability ``q`` (so batch sizes vary and a batch can be empty). :func:`poisson_batches` draws exactly that through
Opacus's sampler. The non-private baseline uses ordinary shuffled epochs (:func:`shuffled_batches`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from common.data.dataset import LabeledTexts
from common.errors import DataValidationError, PrivacyParameterError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class TokenizedTexts:
    """A dataset tokenised once (truncated to ``max_length``, unpadded); batches are padded on demand."""

    def __init__(self, dataset: LabeledTexts, tokenizer: PreTrainedTokenizerBase, *, max_length: int) -> None:
        self.dataset = dataset
        self.tokenizer = tokenizer
        encoded = tokenizer(list(dataset.texts), truncation=True, max_length=max_length)
        self._features = {key: list(values) for key, values in encoded.items()}
        self.labels = torch.tensor(dataset.labels, dtype=torch.long)
        self.lengths = [len(ids) for ids in self._features["input_ids"]]

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: Sequence[int], device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Model inputs (padded to the longest example) and labels for ``indices``, on ``device``."""
        rows = {key: [values[i] for i in indices] for key, values in self._features.items()}
        padded = self.tokenizer.pad(rows, return_tensors="pt")
        inputs = {key: tensor.to(device) for key, tensor in padded.items()}
        return inputs, self.labels[list(indices)].to(device)


@dataclass(frozen=True)
class StepPlan:
    """How a job samples: ``steps`` logical batches at Poisson rate ``sample_rate`` (expected size ``batch_size``)."""

    num_examples: int
    batch_size: int
    sample_rate: float
    steps: int


def plan_steps(*, num_examples: int, batch_size: int, epochs: int, source: str) -> StepPlan:
    """Steps needed for ``epochs`` passes at expected batch ``batch_size``; checks the data can support it.

    Raises DataValidationError (naming ``source``) when there are fewer examples than one expected batch: the
    sample rate ``batch_size / N`` would exceed 1.
    """
    if num_examples < batch_size:
        raise DataValidationError(
            f"too few examples for the batch size: {num_examples} training examples but an expected batch of "
            f"{batch_size} (the sample rate batch/N must be <= 1); lower --batch-size or add data",
            path=source,
        )
    sample_rate = batch_size / num_examples
    steps = epochs * math.ceil(num_examples / batch_size)  # each pass a whole number of expected batches
    return StepPlan(num_examples=num_examples, batch_size=batch_size, sample_rate=sample_rate, steps=steps)


def poisson_batches(
    *, num_examples: int, sample_rate: float, steps: int, generator: torch.Generator
) -> Iterator[list[int]]:
    """``steps`` Poisson-sampled index lists (possibly empty), as DP-SGD's analysis assumes."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    if not 0.0 < sample_rate <= 1.0:
        raise PrivacyParameterError(f"sample rate must be in (0, 1]; got {sample_rate}")
    sampler = UniformWithReplacementSampler(
        num_samples=num_examples, sample_rate=sample_rate, generator=generator, steps=steps
    )
    yield from sampler


def shuffled_batches(
    *, num_examples: int, batch_size: int, steps: int, generator: torch.Generator
) -> Iterator[list[int]]:
    """``steps`` fixed-size batches from consecutive shuffled epochs (the non-private baseline)."""
    emitted = 0
    while True:
        order = torch.randperm(num_examples, generator=generator).tolist()
        for start in range(0, num_examples, batch_size):
            if emitted == steps:
                return
            yield order[start : start + batch_size]
            emitted += 1


def physical_chunks(indices: list[int], max_size: int, lengths: Sequence[int] | None = None) -> list[list[int]]:
    """Split a logical batch into device-sized chunks; an empty batch is one empty chunk (it still takes a step).

    With ``lengths``, examples are grouped by token length first, so each chunk pads to a similar length (less
    wasted compute). The grouping cannot change the step: DP-SGD sums clipped per-example gradients over the whole
    logical batch before adding noise, and a sum does not depend on how its terms were grouped.
    """
    if not indices:
        return [[]]
    if lengths is not None and len(indices) > max_size:
        indices = sorted(indices, key=lambda i: lengths[i])
    return [indices[i : i + max_size] for i in range(0, len(indices), max_size)]
