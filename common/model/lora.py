"""LoRA adapters (Hu et al., ICLR 2022) and FFA-LoRA (Sun et al., ICLR 2024) over a sequence classifier.

LoRA adds ``(alpha / r) * B @ A`` to chosen linear layers, with ``A`` random and ``B`` zero at initialisation, and
trains only ``A``, ``B`` and the classification head (kept through peft's ``modules_to_save`` so that the head is
part of the saved adapter). FFA-LoRA freezes every ``A`` at its initial value and trains only ``B`` and the head:
with ``A`` shared by all sites, averaging the ``B`` matrices averages the products ``B @ A`` exactly, and DP noise
is added to half as many parameters.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel
    from transformers import PreTrainedModel


class LoraSettings(BaseModel):
    """Frozen LoRA hyper-parameters. ``target_modules=None`` uses peft's default for the architecture."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    r: int = Field(default=8, ge=1, le=1024)
    alpha: float = Field(default=16.0, gt=0, allow_inf_nan=False)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, allow_inf_nan=False)
    target_modules: tuple[str, ...] | None = None
    ffa: bool | None = None  # None: the job decides (fedtune train: on with DP, off without; a federation: ffa)

    @model_validator(mode="after")
    def _targets_non_empty(self) -> LoraSettings:
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("target_modules must name at least one module (or be omitted for the default)")
        return self


def apply_lora(model: PreTrainedModel, settings: LoraSettings) -> PeftModel:
    """Wrap ``model`` with a fresh LoRA adapter; only adapter weights (and the head) remain trainable.

    LoRA ``A`` matrices are drawn from torch's global generator: seed it first for reproducible runs.
    """
    from peft import LoraConfig, TaskType

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=settings.r,
        lora_alpha=settings.alpha,  # type: ignore[arg-type]  # peft annotates int, accepts float
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules) if settings.target_modules else None,
    )
    return wrap_with_lora(model, config, ffa=bool(settings.ffa), what="this model")


def wrap_with_lora(model: PreTrainedModel, config: LoraConfig, *, ffa: bool, what: str) -> PeftModel:
    """``get_peft_model(model, config)``, its errors as ModelError naming ``what``; FFA-LoRA freezes the A matrices."""
    from peft import get_peft_model

    from common.errors import ModelError

    try:
        with warnings.catch_warnings():
            # peft calls a transformers method deprecated in transformers 5; harmless, and not ours to fix.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, config)
    except ValueError as exc:
        raise ModelError(f"cannot apply LoRA to {what}: {exc}") from exc
    if ffa:
        freeze_lora_a(peft_model)
    return peft_model


def freeze_lora_a(model: PeftModel) -> None:
    """FFA-LoRA: stop training every LoRA ``A`` matrix (they stay at their current, shared values)."""
    for name, param in model.named_parameters():
        if ".lora_A." in name:
            param.requires_grad_(False)


def trainable_parameter_count(model: PeftModel) -> int:
    """Number of scalars that training (and DP noise) touches."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_a_fan_in(model: PeftModel) -> int | None:
    """The input width of the TRAINED LoRA A matrices (the median over adapted layers), or None when A is frozen.

    The recipe sizes plain LoRA's learning rate by it (:func:`common.training.recipe.noise_walk`).
    """
    import statistics

    import torch

    widths = [
        int(module.in_features)
        for name, module in model.named_modules()
        if ".lora_A." in f"{name}." and isinstance(module, torch.nn.Linear) and module.weight.requires_grad
    ]
    return int(statistics.median_low(widths)) if widths else None
