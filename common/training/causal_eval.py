"""A causal LM's held-out loss and perplexity on response tokens (NOT differentially private: raw held-out data)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from common.training.causal_batches import IGNORE_INDEX, TokenizedPairs, token_chunks
from common.training.generation_metrics import perplexity

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class CausalEvalMetrics:
    """Token-weighted mean cross-entropy over the response tokens of ``num_examples`` examples, and its exp."""

    num_examples: int
    tokens: int
    loss: float
    perplexity: float

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready."""
        return asdict(self)


def evaluate_causal(
    model: nn.Module, data: TokenizedPairs, *, max_tokens: int, batch_size: int, device: torch.device
) -> CausalEvalMetrics:
    """Loss and perplexity of ``model`` on ``data``'s response tokens (prompt tokens are masked)."""
    model.to(device)
    model.eval()
    total, count = 0.0, 0
    chunks = token_chunks(list(range(len(data))), data.lengths, max_tokens, max_examples=batch_size)
    with torch.no_grad():
        for chunk in chunks:
            if not chunk:
                continue
            inputs, labels = data.batch(chunk, device)
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            shifted, targets = logits[:, :-1, :].float(), labels[:, 1:]
            losses = torch.nn.functional.cross_entropy(
                shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
            )
            total += float(losses)
            count += int((targets != IGNORE_INDEX).sum())
    loss = total / count if count else math.nan
    return CausalEvalMetrics(num_examples=len(data), tokens=count, loss=loss, perplexity=perplexity(loss))
