"""The federated run's configuration, parsed once from Flower's run config at each app's entry point.

:class:`FederationConfig` composes the settings types the rest of fedtune uses (:class:`LoraSettings`,
:class:`TrainConfig`, :class:`ServerOptimizerSettings`, :class:`SelectionSettings`): their fields, bounds and
defaults are declared there, once, and validated when a run config is parsed, so a bad value is one clear line
before any process starts instead of a failure mid-run. A training setting the run leaves to the recipe (batch
size, local epochs, learning rate, clip) is 0 in the flat run config and None in the model.

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
from common.federation.server_settings import SelectionSettings, ServerOptimizerSettings
from common.model.builtin import BUILTIN_MODEL_ID
from common.model.lora import LoraSettings
from common.model.pooling import Pooling
from common.model.task import ModelTask, TaskChoice, resolve_task
from common.parsing import parse_settings
from common.privacy.accountant import AccountantName
from common.training.config import DEFAULT_DELTA, DEFAULT_TARGET_EPSILON, TrainConfig
from common.training.generate_config import DEFAULT_GENERATE_MAX_LENGTH, DEFAULT_MAX_TOKENS

if TYPE_CHECKING:
    import torch

StrategyName = Literal["fedavg", "ffa", "product"]
#: How accepted updates are weighted: by each site's ``num-examples``, or equally.
Weighting = Literal["examples", "uniform"]

#: Flat run-config key -> (section, field) for the composed settings. Every field of a section has a key here except
#: ``lora.ffa``, which is not a setting of its own: FFA-LoRA is on exactly when the strategy is ``ffa``.
FLAT_KEYS: dict[str, tuple[str, str]] = {
    "local-epochs": ("training", "epochs"),
    "lr-schedule": ("training", "lr_schedule"),
    "warmup-fraction": ("training", "warmup_fraction"),
    "class-weights": ("training", "class_weights"),
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
    "server-optimizer": ("server_optimizer", "name"),
    "server-lr": ("server_optimizer", "lr"),
    "server-momentum": ("server_optimizer", "momentum"),
    "server-beta1": ("server_optimizer", "beta1"),
    "server-beta2": ("server_optimizer", "beta2"),
    "server-tau": ("server_optimizer", "tau"),
    "select-metric": ("selection", "metric"),
    "patience": ("selection", "patience"),
}
#: The composed sections, by field name, and their models.
SECTIONS: dict[str, type[BaseModel]] = {
    "training": TrainConfig,
    "lora": LoraSettings,
    "server_optimizer": ServerOptimizerSettings,
    "selection": SelectionSettings,
}
#: Settings the recipe chooses when left at 0 in a flat run config (None in the model).
RECIPE_KEYS = frozenset({"local-epochs", "batch-size", "learning-rate", "max-grad-norm"})
#: Settings whose 0 in a flat run config means "the default for the rest of the settings" (None in the model).
ZERO_IS_DEFAULT = RECIPE_KEYS | {"server-lr"}
#: Settings whose default depends on the task: a generate run that leaves them out gets these values.
GENERATE_DEFAULTS: dict[str, object] = {"max-length": DEFAULT_GENERATE_MAX_LENGTH, "select-metric": "loss"}
#: Settings that may change when a run resumes (they do not change what the sites compute).
RESUMABLE_KEYS = frozenset({"num-rounds", "out-dir", "round-timeout", "eval-data"})


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class FederationConfig(BaseModel):
    """Every setting of a federated fine-tuning run that the server decides."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, alias_generator=_kebab)

    model: str = BUILTIN_MODEL_ID
    task: TaskChoice = "auto"  # auto: from the model's config (common/model/task.py); generate ignores labels/pooling
    pooling: Pooling = "auto"
    labels: tuple[str, ...] = Field(default=SAMPLE_LABELS, min_length=2)
    strategy: StrategyName = "ffa"
    num_rounds: int = Field(default=3, ge=1)
    sites_per_round: int = Field(default=0, ge=0)  # 0: every site that still has budget
    min_sites: int = Field(default=2, ge=1)
    recipe: Literal["auto", "none"] = "auto"  # auto: settings left unset are chosen per site (common/training/recipe)
    training: TrainConfig = TrainConfig()
    lora: LoraSettings = LoraSettings(ffa=True)
    server_optimizer: ServerOptimizerSettings = ServerOptimizerSettings()
    selection: SelectionSettings = SelectionSettings()
    max_grad_norm: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # None: the recipe's
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
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=2)  # generate: padded tokens per physical batch
    max_new_tokens: int = Field(default=64, ge=1, le=4096)  # generate: most tokens a server-side generation adds
    eval_generations: int = Field(default=16, ge=0)  # generate: server held-out prompts generated from per round
    federated_evaluation: bool = True
    strict_data: bool = False  # refuse, instead of warning about, data the model covers badly (data/coverage.py)
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
        if values.get("task") == "generate":
            for key, value in GENERATE_DEFAULTS.items():
                if key not in values or values[key] is None:
                    values[key] = value
        sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for name in SECTIONS:
            given = values.pop(name, None)
            if isinstance(given, BaseModel):
                sections[name] = given.model_dump(exclude_unset=True)
            elif isinstance(given, Mapping):
                sections[name] = dict(given)
            elif given is not None:
                sections[name] = given  # let pydantic report the wrong type
        for key in [k for k in values if k in FLAT_KEYS]:
            section, field = FLAT_KEYS[key]
            value = values.pop(key)
            sections[section][field] = None if key in ZERO_IS_DEFAULT and value == 0 else value
        if values.get("max-grad-norm", values.get("max_grad_norm")) == 0:
            values.pop("max_grad_norm", None)
            values["max-grad-norm"] = None
        targets = sections["lora"].get("target_modules")
        if isinstance(targets, str):
            sections["lora"]["target_modules"] = tuple(t.strip() for t in targets.split(",") if t.strip()) or None
        strategy = values.get("strategy", cls.model_fields["strategy"].default)
        sections["lora"]["ffa"] = strategy == "ffa"
        return {**values, **sections}

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
        problem = self.task_problem("generate") if self.task == "generate" else None
        if problem is not None:
            raise ValueError(problem)
        if self.recipe == "none":
            unset = [key for key in sorted(RECIPE_KEYS) if self.recipe_choice(key) is None]
            if unset:
                raise ValueError(
                    f"recipe none needs every training setting given (non-zero); unset: {', '.join(unset)}"
                )
        return self

    def model_task(self) -> ModelTask:
        """The run's task: ``task``, or for ``auto`` what the model's config says (ModelError if unreadable)."""
        return resolve_task(self.task, self.model)

    def task_problem(self, task: ModelTask) -> str | None:
        """Why these settings mean nothing for ``task`` (naming the setting), or None."""
        if task != "generate":
            return None
        if self.training.class_weights != "none":
            return f"class-weights {self.training.class_weights} applies to classification, not to generation"
        if self.selection.metric != "loss":
            return f"select-metric {self.selection.metric} is a classification metric; a generate run selects by loss"
        return None

    def recipe_choice(self, key: str) -> float | int | None:
        """The value of a :data:`RECIPE_KEYS` setting (None: left to the recipe)."""
        if key == "max-grad-norm":
            return self.max_grad_norm
        section, field = FLAT_KEYS[key]
        value: float | int | None = getattr(getattr(self, section), field)
        return value

    @property
    def upload_dtype(self) -> torch.dtype:
        """The dtype sites upload their tensors in."""
        import torch

        return torch.float16 if self.upload_precision == "float16" else torch.float32

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """Flat Flower run config (kebab-case keys); ``parse_run_config`` of it gives back this config."""
        flat: dict[str, bool | int | float | str] = {}
        for key, value in self.model_dump(by_alias=True, exclude=set(SECTIONS)).items():
            flat[key] = _flat(key, value)
        sections = {name: getattr(self, name).model_dump() for name in SECTIONS}
        for key, (section, field) in FLAT_KEYS.items():
            flat[key] = _flat(key, sections[section][field])
        return flat

    def fingerprint(self) -> str:
        """sha256 of the settings that must not change when a run resumes from a checkpoint."""
        stable = {k: v for k, v in self.to_run_config().items() if k not in RESUMABLE_KEYS}
        return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()


def _flat(key: str, value: Any) -> bool | int | float | str:
    """A run-config value: tuples comma-joined, a recipe's choice (None) as 0, other None as ""."""
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    if value is None:
        return 0 if key in ZERO_IS_DEFAULT else ""
    return value


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
