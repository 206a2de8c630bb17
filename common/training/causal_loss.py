"""The generative fine-tuning loss, written so that DP-SGD's per-example clipping bounds each example.

Next-token cross-entropy on the response tokens only (labels ``-100`` elsewhere), averaged first over each example's
own response tokens and then over the batch. Each example's term depends on its own tokens alone, so the gradient of
the batch mean is the mean of per-example gradients, which is exactly what Opacus clips (``loss_reduction="mean"``):
a long example cannot outweigh a short one by more than the clip norm C.

Not Hugging Face's ``model(labels=...).loss``: that averages over all tokens of the batch, so one example's weight
depends on the other examples' lengths (a quantity per-example clipping does not see) and the loss of a chunk is not
the mean of per-example losses. Not ``reduction="mean"`` over tokens either, for the same reason.
"""

from __future__ import annotations

import torch

from common.training.causal_batches import IGNORE_INDEX


def per_example_causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each example's mean next-token cross-entropy over its labelled tokens, shape ``(batch,)``.

    ``logits`` is ``(batch, seq, vocab)``, ``labels`` is ``(batch, seq)`` aligned with the inputs (position ``t``'s
    label is predicted from position ``t - 1``). Computed in float32 whatever the logits' dtype. An example with no
    labelled token contributes 0.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits (B, T, V) and labels (B, T); got {tuple(logits.shape)}, {tuple(labels.shape)}"
        )
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:]
    token_losses = torch.nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shifted_labels.shape)
    counts = (shifted_labels != IGNORE_INDEX).sum(dim=1)
    return token_losses.sum(dim=1) / counts.clamp(min=1)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The batch mean of :func:`per_example_causal_lm_loss`: a scalar whose per-example terms are independent."""
    return per_example_causal_lm_loss(logits, labels).mean()
