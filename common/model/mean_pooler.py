"""Masked mean pooling installed in place of a BERT-style pooler (see :mod:`common.model.pooling` for why)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from common.errors import ModelError
from common.model.pooling import ResolvedPooling


class MaskedMeanPooler(nn.Module):
    """Mean of the token states over real (unpadded) tokens; the mask is handed over by a pre-hook."""

    def __init__(self) -> None:
        super().__init__()
        self.attention_mask: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, hidden) -> (batch, hidden)."""
        mask = self.attention_mask
        if mask is None or mask.shape[:2] != hidden_states.shape[:2]:
            mask = torch.ones(hidden_states.shape[:2], device=hidden_states.device)
        weights = mask.to(hidden_states.dtype).unsqueeze(-1)
        return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def apply_pooling(model: nn.Module, pooling: ResolvedPooling) -> nn.Module:
    """Install mean pooling on a BERT-style classifier in place (``cls`` leaves the model as it is)."""
    if pooling == "cls":
        return model
    encoder = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if encoder is None or getattr(encoder, "pooler", None) is None:
        raise ModelError(
            f"mean pooling needs a BERT-style model with a pooler module; {type(model).__name__} has none "
            "(use pooling 'cls')"
        )
    pooler = MaskedMeanPooler()
    encoder.pooler = pooler

    def hand_over_mask(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask = args[1]
        pooler.attention_mask = mask

    encoder.register_forward_pre_hook(hand_over_mask, with_kwargs=True)
    return model
