"""The federated run's configuration, parsed once from Flower's run config at each app's entry point.

:class:`FederationConfig` composes the settings types the rest of fedtune uses (:class:`LoraSettings`,
:class:`TrainConfig`): their fields, bounds and defaults are declared there, once, and validated when a run config is
parsed, so a bad value is one clear line before any process starts instead of a failure mid-run.

On the wire a run config is flat (Flower: ``str | int | float | bool`` values, kebab-case keys such as ``lora-r``).
:data:`FLAT_KEYS` maps each flat key that belongs to a composed section to its field; every other key is a top-level
field with its name in kebab case. ``to_run_config`` is the exact inverse, so ``fedtune simulate`` and
``fedtune server start`` pass exactly what the apps parse, and pyproject's ``[tool.flwr.app.config]`` is the flat
form of the defaults (``tests/common/federation/test_config.py`` checks that it is).

The server proposes; each site disposes: ``target_epsilon`` is what the server asks each site to spend at most in
this run, but a site also enforces its own lifetime limit from its node config, which the run config cannot change.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.data.sample import SAMPLE_LABELS
from common.model.builtin import BUILTIN_MODEL_ID
from common.model.lora import LoraSettings
from common.model.pooling import Pooling
from common.parsing import parse_settings
from common.privacy.accountant import AccountantName
from common.training.config import DEFAULT_DELTA, DEFAULT_TARGET_EPSILON, TrainConfig

if TYPE_CHECKING:
    import torch

StrategyName = Literal["fedavg", "ffa", "product"]
#: How accepted updates are weighted: by each site's ``num-examples``, or equally.
Weighting = Literal["examples", "uniform"]

#: Flat run-config key -> (section, field) for the composed settings. Every field of a section has a key here except
#: ``lora.ffa``, which is not a setting of its own: FFA-LoRA is on exactly when the strategy is ``ffa``.
FLAT_KEYS: dict[str, tuple[str, str]] = {
    "local-epochs": ("training", "epochs"),
    "batch-size": ("training", "batch_size"),
    "physical-batch-size": ("training", "physical_batch_size"),
    "optimizer": ("training", "optimizer"),
    "learning-rate": ("training", "learning_rate"),
    "weight-decay": ("training", "weight_decay"),
    "max-length": ("training", "max_length"),
    "eval-batch-size": ("training", "eval_batch_size"),
    "lora-r": ("lora", "r"),
    "lora-alpha": ("lora", "alpha"),
    "lora-dropout": ("lora", "dropout"),
    "lora-targets": ("lora", "target_modules"),
}
#: Settings that may change when a run resumes (they do not change what the sites compute).
RESUMABLE_KEYS = frozenset({"num-rounds", "out-dir", "round-timeout", "eval-data"})
#: The training settings of a federation, where they differ from a one-shot ``fedtune train`` job: one local pass.
FEDERATED_TRAINING = TrainConfig(epochs=1)


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class FederationConfig(BaseModel):
    """Every setting of a federated fine-tuning run that the server decides."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, alias_generator=_kebab)

    model: str = BUILTIN_MODEL_ID
    pooling: Pooling = "auto"
    labels: tuple[str, ...] = Field(default=SAMPLE_LABELS, min_length=2)
    strategy: StrategyName = "ffa"
    num_rounds: int = Field(default=3, ge=1)
    sites_per_round: int = Field(default=0, ge=0)  # 0: every site that still has budget
    min_sites: int = Field(default=2, ge=1)
    training: TrainConfig = FEDERATED_TRAINING
    lora: LoraSettings = LoraSettings(ffa=True)
    max_grad_norm: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    target_epsilon: float = Field(default=DEFAULT_TARGET_EPSILON, gt=0, allow_inf_nan=False)
    delta: float = Field(default=DEFAULT_DELTA, gt=0, lt=1)
    accountant: AccountantName = "prv"
    max_update_norm: float = Field(default=1000.0, gt=0, allow_inf_nan=False)
    upload_precision: Literal["float32", "float16"] = "float16"
    max_site_weight: float = Field(
        default=0.5,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description=(
            "The largest share of a round's total weight one accepted update may have; a site above it is rejected "
            "and excluded for the rest of the run. 0.5: with more than half of a round's weight, one site alone "
            "decides the aggregate (its claimed num-examples is unverifiable). Honest two-site federations of "
            "unequal size must raise it (or use uniform weighting); a single-site run needs 1."
        ),
    )
    weighting: Weighting = Field(
        default="examples",
        description="examples: weight each update by its site's num-examples; uniform: every update equally.",
    )
    federated_evaluation: bool = True
    eval_data: str = ""  # server-side held-out file ("" = none)
    out_dir: str = "runs/flwr-local"
    seed: int = 0
    round_timeout: float = Field(default=3600.0, gt=0, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _compose(cls, data: Any) -> Any:
        """Gather flat section keys (``lora-r``...) into their sections; FFA-LoRA follows the strategy."""
        if not isinstance(data, Mapping):
            return data
        values = dict(data)
        sections: dict[str, dict[str, Any]] = {"training": {}, "lora": {}}
        for name in ("training", "lora"):
            given = values.pop(name, None)
            if isinstance(given, BaseModel):
                sections[name] = given.model_dump(exclude_unset=True)  # unset fields keep the federation's defaults
            elif isinstance(given, Mapping):
                sections[name] = dict(given)
            elif given is not None:
                sections[name] = given  # let pydantic report the wrong type
        for key in [k for k in values if k in FLAT_KEYS]:
            section, field = FLAT_KEYS[key]
            sections[section][field] = values.pop(key)
        targets = sections["lora"].get("target_modules")
        if isinstance(targets, str):
            sections["lora"]["target_modules"] = tuple(t.strip() for t in targets.split(",") if t.strip()) or None
        strategy = values.get("strategy", cls.model_fields["strategy"].default)
        sections["lora"]["ffa"] = strategy == "ffa"
        training = {**FEDERATED_TRAINING.model_dump(), **sections["training"]}
        return {**values, "training": training, "lora": sections["lora"]}

    @field_validator("labels", mode="before")
    @classmethod
    def _split_labels(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("labels")
    @classmethod
    def _distinct_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not name.strip() or "," in name for name in value):
            raise ValueError(f"labels must be non-empty names without commas; got {list(value)}")
        if len(set(value)) != len(value):
            raise ValueError(f"labels must be distinct; got {list(value)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FederationConfig:
        if self.sites_per_round and self.sites_per_round < self.min_sites:
            raise ValueError(f"sites-per-round ({self.sites_per_round}) is below min-sites ({self.min_sites})")
        # K accepted updates give the largest one a share of at least 1/K: a round of min-sites updates must be able
        # to meet the cap, or no round could ever aggregate.
        if self.max_site_weight * self.min_sites < 1 - 1e-9:
            needed = math.ceil(1 / self.max_site_weight - 1e-9)
            raise ValueError(
                f"max-site-weight {self.max_site_weight:g} needs at least {needed} updates per round, but min-sites "
                f"is {self.min_sites}: raise min-sites to {needed} or max-site-weight to {1 / self.min_sites:g}"
            )
        return self

    @property
    def upload_dtype(self) -> torch.dtype:
        """The dtype sites upload their tensors in."""
        import torch

        return torch.float16 if self.upload_precision == "float16" else torch.float32

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """Flat Flower run config (kebab-case keys); ``parse_run_config`` of it gives back this config."""
        flat: dict[str, bool | int | float | str] = {}
        for key, value in self.model_dump(by_alias=True, exclude={"training", "lora"}).items():
            flat[key] = ",".join(value) if isinstance(value, tuple | list) else value
        sections = {"training": self.training.model_dump(), "lora": self.lora.model_dump()}
        for key, (section, field) in FLAT_KEYS.items():
            value = sections[section][field]
            flat[key] = ",".join(value) if isinstance(value, tuple) else ("" if value is None else value)
        return flat

    def fingerprint(self) -> str:
        """sha256 of the settings that must not change when a run resumes from a checkpoint."""
        stable = {k: v for k, v in self.to_run_config().items() if k not in RESUMABLE_KEYS}
        return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()


def _location_names() -> dict[str, str]:
    """Pydantic error locations of composed fields -> the flat key a user wrote."""
    return {f"{section}.{field}": key for key, (section, field) in FLAT_KEYS.items()}


#: What errors call each setting: the flat run-config key (``training.batch_size`` is ``batch-size``).
RUN_CONFIG_NAMES = _location_names()


def parse_run_config(
    run_config: Mapping[str, Any], *, context: str = "run config", names: Mapping[str, str] | None = None
) -> FederationConfig:
    """FederationConfig from a flat run config; unknown keys are an error (a typo must not pass silently).

    ``names`` renames flat keys in error messages (e.g. ``{"batch-size": "--batch-size"}`` for a CLI).
    """
    shown = {loc: (names or {}).get(key, key) for loc, key in RUN_CONFIG_NAMES.items()}
    shown.update({key: flag for key, flag in (names or {}).items() if key not in FLAT_KEYS})
    return parse_settings(FederationConfig, run_config, context=context, names=shown)
