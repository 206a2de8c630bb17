"""The federated run's configuration, parsed once from Flower's run config at each app's entry point.

Flower run-config values are flat ``str | int | float | bool``; keys are kebab-case (``lora-r``). The same model
serialises back to a run config (``to_run_config``) so that ``fedtune simulate`` and ``fedtune server start`` pass
exactly what the apps parse.

The server proposes; each site disposes: ``target_epsilon`` is what the server asks each site to spend at most in
this run, but a site also enforces its own lifetime limit from its node config, which the run config cannot change.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.model.builtin import BUILTIN_MODEL_ID
from common.model.lora import LoraSettings
from common.model.pooling import Pooling
from common.parsing import parse_settings
from common.privacy.accountant import AccountantName
from common.training.config import DEFAULT_DELTA, DEFAULT_TARGET_EPSILON, TrainConfig

if TYPE_CHECKING:
    import torch

StrategyName = Literal["fedavg", "ffa", "product"]


class FederationConfig(BaseModel):
    """Every setting of a federated fine-tuning run that the server decides."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, alias_generator=lambda n: n.replace("_", "-")
    )

    model: str = BUILTIN_MODEL_ID
    pooling: Pooling = "auto"
    labels: tuple[str, ...] = Field(min_length=2)
    strategy: StrategyName = "ffa"
    num_rounds: int = Field(default=3, ge=1)
    sites_per_round: int = Field(default=0, ge=0)  # 0: every site that still has budget
    min_sites: int = Field(default=2, ge=1)
    local_epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=64, ge=1)
    physical_batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=TrainConfig().learning_rate, gt=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    max_length: int = Field(default=64, ge=2)
    lora_r: int = Field(default=8, ge=1)
    lora_alpha: float = Field(default=16.0, gt=0)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    lora_targets: str = ""  # comma-separated; empty: peft's default for the architecture
    max_grad_norm: float = Field(default=1.0, gt=0)
    target_epsilon: float = Field(default=DEFAULT_TARGET_EPSILON, gt=0)
    delta: float = Field(default=DEFAULT_DELTA, gt=0, lt=1)
    accountant: AccountantName = "prv"
    max_update_norm: float = Field(default=1000.0, gt=0)
    upload_precision: Literal["float32", "float16"] = "float16"
    federated_evaluation: bool = True
    eval_data: str = ""  # server-side held-out file ("" = none)
    out_dir: str = "runs/federation"
    seed: int = 0
    round_timeout: float = Field(default=3600.0, gt=0)

    @field_validator("labels", mode="before")
    @classmethod
    def _split_labels(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FederationConfig:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be distinct; got {list(self.labels)}")
        if self.sites_per_round and self.sites_per_round < self.min_sites:
            raise ValueError(f"sites-per-round ({self.sites_per_round}) is below min-sites ({self.min_sites})")
        return self

    @property
    def lora(self) -> LoraSettings:
        """The LoRA settings (FFA-LoRA exactly when the strategy is ``ffa``)."""
        targets = tuple(t.strip() for t in self.lora_targets.split(",") if t.strip()) or None
        return LoraSettings(
            r=self.lora_r,
            alpha=self.lora_alpha,
            dropout=self.lora_dropout,
            target_modules=targets,
            ffa=self.strategy == "ffa",
        )

    def train_config(self, *, seed: int | None, device: str) -> TrainConfig:
        """A site's local TrainConfig for one round (the seed and device are the site's own)."""
        return TrainConfig(
            epochs=self.local_epochs,
            batch_size=self.batch_size,
            physical_batch_size=self.physical_batch_size,
            learning_rate=self.learning_rate,
            optimizer=self.optimizer,
            max_length=self.max_length,
            seed=seed,
            device=device,
        )

    @property
    def upload_dtype(self) -> torch.dtype:
        """The dtype sites upload their tensors in."""
        import torch

        return torch.float16 if self.upload_precision == "float16" else torch.float32

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """Flat Flower run config (kebab-case keys)."""
        flat: dict[str, bool | int | float | str] = {}
        for key, value in self.model_dump(by_alias=True).items():
            flat[key] = ",".join(value) if isinstance(value, tuple | list) else value
        return flat

    def fingerprint(self) -> str:
        """sha256 of the settings that must not change when a run resumes from a checkpoint."""
        stable = self.model_dump(by_alias=True, exclude={"num_rounds", "out_dir", "round_timeout", "eval_data"})
        return hashlib.sha256(json.dumps(stable, sort_keys=True, default=list).encode()).hexdigest()


def parse_run_config(run_config: Mapping[str, Any]) -> FederationConfig:
    """FederationConfig from a Flower run config; unknown keys are an error (a typo must not pass silently)."""
    return parse_settings(FederationConfig, run_config, context="run config")
