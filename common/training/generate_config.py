"""Frozen, validated settings of a generative fine-tuning job (``fedtune train --task generate``).

The same training, LoRA and privacy settings as classification (the recipe fills what is left unset), plus what
generation needs: the prompt/response columns, longer sequences, a bound on the tokens of a physical batch and on
the tokens a generation may add. Selection defaults to the evaluation loss (lowest). Like the device, precision
(autocast) and gradient checkpointing are the running site's choices of speed and memory; neither changes the
privacy accounting.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from common.data.pairs import PairSpec
from common.model.lora import LoraSettings
from common.training.config import (
    DEFAULT_EVAL_FRACTION,
    DEFAULT_TARGET_EPSILON,
    DeviceChoice,
    PrivacySettings,
    TrainConfig,
)
from common.training.precision import Precision
from common.training.selection import SelectionSettings

#: Tokens kept per prompt + response: instruction data is longer than classification text.
DEFAULT_GENERATE_MAX_LENGTH = 256
#: Padded tokens per physical batch (rows x longest): what activations and logits grow with.
DEFAULT_MAX_TOKENS = 4096
#: Evaluation examples whose generations are scored (ROUGE-L, BLEU, exact match); generating is the slow part.
DEFAULT_EVAL_GENERATIONS = 64


class GenerateJob(BaseModel):
    """Everything ``fedtune train --task generate`` needs, validated once at the edge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    data: PairSpec = PairSpec()
    lora: LoraSettings = LoraSettings()  # target_modules None: the architecture's defaults (common/model/causal.py)
    training: TrainConfig = TrainConfig(max_length=DEFAULT_GENERATE_MAX_LENGTH)
    privacy: PrivacySettings = PrivacySettings(target_epsilon=DEFAULT_TARGET_EPSILON)
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=2)
    max_new_tokens: int = Field(default=64, ge=1, le=4096)
    eval_generations: int = Field(default=DEFAULT_EVAL_GENERATIONS, ge=0)
    eval_fraction: float = Field(default=DEFAULT_EVAL_FRACTION, gt=0.0, lt=1.0, allow_inf_nan=False)
    split_seed: int = 0
    seed: int | None = None
    device: DeviceChoice = "auto"
    precision: Precision = "fp32"  # autocast of the forward pass (common/training/precision.py)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~1 more forward pass
    selection: SelectionSettings = SelectionSettings(metric="loss")
