"""Greedy generation with a causal LM and its adapter: what ``fedtune generate`` and the evaluation run.

Prompts are rendered with the template the adapter was trained with (recorded in ``fedtune_model.json``:
the tokenizer's chat template or fedtune's plain template), batched with LEFT padding (a decoder continues from the
last position, so padding must not sit between the prompt and its continuation), and decoded without special
tokens. Greedy decoding (no sampling) makes a generation a deterministic function of the adapter and the prompt,
which is what evaluation needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedTokenizerBase

#: Default bound on the tokens a generation may add.
DEFAULT_MAX_NEW_TOKENS = 64


def generate_texts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 8,
    device: torch.device,
    max_prompt_tokens: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """The greedy continuation of each rendered prompt (at most ``max_new_tokens`` tokens, stopping at EOS).

    ``max_prompt_tokens`` keeps the END of a longer prompt (its start is what truncation loses at training too).
    ``progress(done, total)`` is called after every batch.
    """
    import torch

    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1; got {max_new_tokens}, {batch_size}")
    side, truncation_side = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    model.to(device)
    model.eval()
    outputs: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            encoded = tokenizer(
                chunk,
                return_tensors="pt",
                padding=True,
                truncation=max_prompt_tokens is not None,
                max_length=max_prompt_tokens,
                add_special_tokens=False,
            ).to(device)
            with torch.no_grad():
                generated = model.generate(  # type: ignore[operator]  # a PreTrainedModel or PeftModel
                    **encoded,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new_tokens = generated[:, encoded["input_ids"].shape[1] :]
            outputs += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            if progress is not None:
                progress(len(outputs), len(prompts))
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = side, truncation_side
    return outputs
