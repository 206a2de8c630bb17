"""Tokenised (prompt, response) pairs for generative fine-tuning, and token-bounded physical batches.

Each example is ``prompt_ids + response_ids + [eos]``, with labels aligned to the inputs (the Hugging Face
convention; the loss shifts them): ``-100`` on prompt and padding positions, so only the response and its EOS are
learnt. Prompts are rendered strings (:mod:`common.data.templates`) and are tokenised without special tokens, exactly
as :mod:`common.inference.generate` tokenises them, so training and generation see the same prompt ids.

Truncation to ``max_length`` keeps what the loss needs: the prompt loses its START (its end is the context right
before the response), and only when the response and EOS alone do not fit is the response cut at its END, keeping at
least one prompt token (the first response token has to be predicted from something) and at least one response
token.

Invariants: an example with a non-empty prompt has at least one labelled position after the first (one predicted
token); ``len(input_ids) <= max_length``; batches pad on the right (causal attention: real tokens never see the
padding after them, so an example's logits do not depend on the batch it is in).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from common.errors import DataValidationError, ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from common.data.pairs import PromptResponsePairs

#: The label that cross-entropy ignores (torch's and Hugging Face's convention).
IGNORE_INDEX = -100


class TokenizedPairs:
    """Prompts and responses tokenised once (unpadded); ``batch`` pads on demand, like ``TokenizedTexts``."""

    def __init__(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_length: int,
    ) -> None:
        if len(prompts) != len(responses):
            raise DataValidationError(f"{len(prompts)} prompts but {len(responses)} responses")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (one prompt and one response token); got {max_length}")
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ModelError("the tokenizer has no end-of-sequence token; a causal LM needs one to end its responses")
        pad = tokenizer.pad_token_id
        self.pad_id: int = int(pad if pad is not None else eos)
        self.tokenizer = tokenizer
        self.max_length = max_length
        prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
        response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"] if responses else []
        self._input_ids: list[list[int]] = []
        self._prompt_lengths: list[int] = []
        self.truncated_prompts = 0
        self.truncated_responses = 0
        for prompt, response in zip(prompt_ids, response_ids, strict=True):
            kept_prompt, kept_response = fit_pair(list(prompt), [*response, int(eos)], max_length)
            self.truncated_prompts += len(kept_prompt) < len(prompt)
            self.truncated_responses += len(kept_response) < len(response) + 1
            self._input_ids.append(kept_prompt + kept_response)
            self._prompt_lengths.append(len(kept_prompt))
        self.lengths = [len(ids) for ids in self._input_ids]

    def __len__(self) -> int:
        return len(self._input_ids)

    def labels_of(self, index: int) -> list[int]:
        """Example ``index``'s labels: ``-100`` on its prompt, its token ids on the response and EOS."""
        ids, prompt_length = self._input_ids[index], self._prompt_lengths[index]
        return [IGNORE_INDEX] * prompt_length + ids[prompt_length:]

    def batch(self, indices: Sequence[int], device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``({"input_ids", "attention_mask"}, labels)`` for ``indices``, right-padded to the longest, on ``device``."""
        if not indices:
            raise ValueError("cannot build an empty batch (a transformer's forward pass fails on zero rows)")
        width = max(self.lengths[i] for i in indices)
        input_ids = torch.full((len(indices), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
        labels = torch.full((len(indices), width), IGNORE_INDEX, dtype=torch.long)
        for row, index in enumerate(indices):
            length = self.lengths[index]
            input_ids[row, :length] = torch.tensor(self._input_ids[index])
            attention_mask[row, :length] = 1
            labels[row, :length] = torch.tensor(self.labels_of(index))
        inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
        return inputs, labels.to(device)


def tokenize_pairs(
    pairs: PromptResponsePairs, tokenizer: PreTrainedTokenizerBase, *, max_length: int
) -> TokenizedPairs:
    """``pairs`` with each prompt rendered and tokenised: how training, evaluation and every site see a pair.

    Chat records are rendered with the tokenizer's chat template, plain ones with the documented plain template
    (:mod:`common.data.templates`).
    """
    from common.data.templates import render_prompts

    rendered = render_prompts(pairs.prompts, pairs.turns, tokenizer)
    return TokenizedPairs(rendered, pairs.responses, tokenizer, max_length=max_length)


def fit_pair(prompt: list[int], response: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """``(prompt, response)`` cut to ``max_length`` tokens together, as the module docstring describes.

    ``response`` includes its EOS. The prompt is cut from the left first; when the response alone leaves no room for
    one prompt token, the prompt keeps its last token (if it has any) and the response is cut from the right.
    """
    if len(prompt) + len(response) <= max_length:
        return prompt, response
    keep_prompt = min(len(prompt), max(1, max_length - len(response)))
    kept_prompt = prompt[len(prompt) - keep_prompt :]
    return kept_prompt, response[: max_length - keep_prompt]


def token_chunks(
    indices: Sequence[int], lengths: Sequence[int], max_tokens: int, max_examples: int | None = None
) -> list[list[int]]:
    """Split a logical batch into physical chunks whose padded size ``len(chunk) * longest`` is <= ``max_tokens``.

    Examples are sorted by length first (length bucketing: little padding), then packed greedily; an example longer
    than ``max_tokens`` on its own gets a chunk of its own (every chunk holds at least one example), and
    ``max_examples`` optionally bounds the rows of a chunk too. Every index lands in exactly one chunk. An empty
    logical batch is one empty chunk, as in :func:`common.training.batches.physical_chunks` (it still takes a step).
    As there, the grouping cannot change a DP-SGD step: clipped per-example gradients are summed over the logical
    batch before the noise, whatever the chunks.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1; got {max_tokens}")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be >= 1; got {max_examples}")
    if not indices:
        return [[]]
    chunks: list[list[int]] = []
    current: list[int] = []
    for index in sorted(indices, key=lambda i: lengths[i]):
        # Sorted ascending, so the newcomer is the chunk's longest example.
        too_many = max_examples is not None and len(current) >= max_examples
        if current and (too_many or (len(current) + 1) * lengths[index] > max_tokens):
            chunks.append(current)
            current = []
        current.append(index)
    chunks.append(current)
    return chunks
