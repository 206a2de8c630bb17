"""Frozen, validated settings for one local training job (parsed once, at the CLI or app entry point)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.data.spec import DataSpec, utf8_problem
from common.model.builtin import BUILTIN_MODEL_ID
from common.model.lora import LoraSettings
from common.model.pooling import Pooling
from common.privacy.accountant import AccountantName
from common.training.class_weights import parse_class_weights
from common.training.precision import Precision
from common.training.schedule import ScheduleKind
from common.training.selection import SelectionSettings

DeviceChoice = Literal["auto", "cpu", "cuda"]

DEFAULT_TARGET_EPSILON = 8.0
DEFAULT_DELTA = 1e-5
DEFAULT_EVAL_FRACTION = 0.2


class PrivacySettings(BaseModel):
    """How private training is: a target (epsilon, delta) to calibrate sigma for, or a fixed sigma.

    ``enabled=False`` is the non-private baseline; it must be asked for explicitly (``--no-dp``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    target_epsilon: float | None = None
    noise_multiplier: float | None = None
    delta: float = Field(default=DEFAULT_DELTA, gt=0.0, lt=1.0, allow_inf_nan=False)
    max_grad_norm: float | None = None  # None: the recipe chooses (common/training/recipe.py)
    accountant: AccountantName = "prv"

    # Checked per field (not in the model validator) so that an error names the setting, e.g. '--epsilon'.
    @field_validator("target_epsilon", "noise_multiplier")
    @classmethod
    def _finite_positive(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError("must be a finite number > 0")
        return value

    @field_validator("max_grad_norm")
    @classmethod
    def _finite_clip(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError("must be a finite number > 0 (an infinite clip voids the privacy guarantee)")
        return value

    @model_validator(mode="after")
    def _one_way_to_set_noise(self) -> PrivacySettings:
        if self.enabled and (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("give exactly one of a target epsilon or a noise multiplier")
        return self


class TrainConfig(BaseModel):
    """Optimisation settings: what to train, the same at every site of a federation.

    ``batch_size`` is the expected *logical* batch (DP-SGD samples each example with probability ``batch_size / N``);
    ``physical_batch_size`` bounds what is on the device at once. ``epochs`` are passes over the data (in a federation:
    local passes per round). A setting left at None is chosen by the recipe (:mod:`common.training.recipe`) from the
    data's size and the privacy budget; a value given explicitly is used as it is. Where and how reproducibly to run
    (device, seed) is not part of it: those belong to whoever runs the job (a site never takes them from the server).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    physical_batch_size: int = Field(default=32, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    learning_rate: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    weight_decay: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    max_length: int = Field(default=64, ge=2, le=8192)
    eval_batch_size: int = Field(default=64, ge=1)
    lr_schedule: ScheduleKind = "constant"
    warmup_fraction: float = Field(default=0.0, ge=0.0, lt=1.0, allow_inf_nan=False)
    class_weights: str = "none"  # none | balanced (from a DP histogram of the labels) | W1,W2,... (one per class)

    @field_validator("class_weights")
    @classmethod
    def _class_weights(cls, value: str) -> str:
        return parse_class_weights(value).text

    def resolved(self, **choices: object) -> TrainConfig:
        """The config with the recipe's ``choices`` filled in where a setting was left to it (validated)."""
        chosen = {key: value for key, value in choices.items() if getattr(self, key) is None}
        return TrainConfig.model_validate({**self.model_dump(), **chosen})


class TrainJob(BaseModel):
    """Everything ``fedtune train`` needs, validated once at the edge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = BUILTIN_MODEL_ID
    pooling: Pooling = "auto"
    data: DataSpec = DataSpec()
    lora: LoraSettings = LoraSettings()
    training: TrainConfig = TrainConfig()
    privacy: PrivacySettings = PrivacySettings(target_epsilon=DEFAULT_TARGET_EPSILON)
    eval_fraction: float = Field(default=DEFAULT_EVAL_FRACTION, gt=0.0, lt=1.0, allow_inf_nan=False)
    split_seed: int = 0
    seed: int | None = None  # initialisation, sampling and noise; None: fresh OS entropy (noise cannot be replayed)
    device: DeviceChoice = "auto"
    precision: Precision = "fp32"  # autocast of the forward pass (common/training/precision.py); the site's, as device
    selection: SelectionSettings = SelectionSettings()  # the kept epoch, by the evaluation split; early stopping
    strict_data: bool = False  # refuse, instead of warning about, data the model covers badly (data/coverage.py)

    @model_validator(mode="after")
    def _ffa_with_dp(self) -> TrainJob:
        """FFA-LoRA by default when private, plain LoRA without DP.

        FFA halves the trainable size, so the same epsilon buys less noise per coordinate (Sun et al., ICLR 2024).
        """
        if self.lora.ffa is None:
            lora = self.lora.model_copy(update={"ffa": self.privacy.enabled})
            object.__setattr__(self, "lora", lora)
        return self

    @field_validator("model", mode="before")
    @classmethod
    def _utf8_model(cls, value: Any) -> Any:
        # The model's name is written into summary.json and the adapter's config: it must be text.
        problem = utf8_problem(value) if isinstance(value, str) else None
        if problem is not None:
            raise ValueError(problem)
        return value
