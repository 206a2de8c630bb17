"""A site's own settings, from its node config. The server cannot set or override any of them.

Flower passes node config to a SuperNode with ``--node-config 'data-path="..." ledger-path="..." ...'``; values are
flat ``str | int | float | bool`` with kebab-case keys (lists are comma-separated strings). The data path, the
ledger, the epsilon limit and delta, the label set and which held-out metrics may be released belong to the data
owner.

* ``labels``: the site's own label set (class ``i`` is the ``i``-th name). Unset: a ``labels.json`` beside the data
  file, else the set inferred from the file (sorted names, or ``0..max`` for integer labels). A server whose run
  labels differ (names or order) is refused: its labels never decide what the site's records mean.
* ``task``: what the data file holds and serves, ``classify`` (labelled texts, the default) or ``generate``
  (prompt/response pairs). A run of the other task is refused (``task-differs``): the server never decides how the
  site's file is read.
* ``prompt-column`` / ``response-column``: the columns of a generate site's prompt/response file (a JSON Lines
  ``messages`` column of chat turns is read as well).
* ``device``, ``precision``, ``gradient-checkpointing``: how the site's hardware trains (CUDA when present; bf16
  autocast; recomputed activations in a generate run). They change no privacy parameter: the mechanism is the
  planned (sigma, C) in every precision (:mod:`common.training.precision`).
* ``release-metrics``: the held-out metrics (:data:`~common.federation.protocol.RELEASABLE_METRICS`) the site
  releases, WITHOUT differential privacy, when the server asks; empty (the default) releases none and holds no
  split out. The older node-config key ``evaluate=true`` still works and means all three (``accuracy,macro-f1,
  loss``); ``evaluate=false`` means none; giving both keys is an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from common.data.pairs import PairSpec
from common.data.spec import DataSpec, utf8_problem
from common.federation.protocol import RELEASABLE_METRICS
from common.model.task import ModelTask
from common.parsing import parse_settings
from common.privacy.budget import DEFAULT_MAX_EPSILON, BudgetSettings
from common.training.config import DEFAULT_DELTA, DEFAULT_EVAL_FRACTION
from common.training.precision import Precision

#: Node-config keys Flower itself sets for simulated SuperNodes (not site settings).
FLOWER_SIMULATION_KEYS = frozenset({"partition-id", "num-partitions"})
#: What the legacy node-config key ``evaluate=true`` releases.
EVALUATE_ALL = ("accuracy", "macro-f1", "loss")
_LEGACY_EVALUATE = "evaluate"


class SiteSettings(BaseModel):
    """What a data-owning site decides for itself."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, alias_generator=lambda n: n.replace("_", "-")
    )

    site_name: str = Field(default="site", min_length=1)
    task: ModelTask = "classify"  # what the site's data are for: labelled texts, or prompt/response pairs
    data_path: Path
    ledger_path: Path
    max_epsilon: float | None = DEFAULT_MAX_EPSILON
    delta: float = Field(default=DEFAULT_DELTA, gt=0, lt=1, allow_inf_nan=False)
    signing_key: Path | None = None
    text_column: str = Field(default="text", min_length=1)
    label_column: str = Field(default="label", min_length=1)
    prompt_column: str = Field(default="prompt", min_length=1)  # generate runs (or a JSON Lines "messages" column)
    response_column: str = Field(default="response", min_length=1)
    labels: tuple[str, ...] | None = None  # None: labels.json beside the data file, else inferred from it
    release_metrics: tuple[str, ...] = ()  # non-DP held-out metrics released when the server asks; () = none
    eval_fraction: float = Field(default=DEFAULT_EVAL_FRACTION, gt=0, lt=1, allow_inf_nan=False)
    split_seed: int = 0
    seed: int | None = None  # reproducible experiments only: a real site leaves its noise unseeded
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Precision = "fp32"  # autocast of the forward pass (bf16 also under DP; fp16 is refused under DP)
    gradient_checkpointing: bool = False  # generate runs: recompute activations in backward (less memory)

    @model_validator(mode="before")
    @classmethod
    def _legacy_evaluate(cls, data: Any) -> Any:
        """``evaluate=true|false`` (older node configs, ``--evaluate``) as ``release-metrics``."""
        if not isinstance(data, Mapping) or _LEGACY_EVALUATE not in data:
            return data
        values = dict(data)
        given = values.pop(_LEGACY_EVALUATE)
        try:
            evaluate = TypeAdapter(bool).validate_python(given)
        except ValidationError:
            raise ValueError(f"evaluate must be true or false; got {given!r}") from None
        if "release-metrics" in values or "release_metrics" in values:
            raise ValueError("give release-metrics only: evaluate is its older spelling")
        values["release_metrics"] = EVALUATE_ALL if evaluate else ()
        return values

    @field_validator("labels", "release_metrics", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("labels")
    @classmethod
    def _label_set(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if len(value) < 2 or len(set(value)) != len(value) or any(not n.strip() or "," in n for n in value):
            raise ValueError(f"must be at least 2 distinct, non-empty names without commas; got {list(value)}")
        problem = next((p for p in map(utf8_problem, value) if p is not None), None)
        if problem is not None:
            raise ValueError(f"label names {problem}")
        return value

    @field_validator("release_metrics")
    @classmethod
    def _releasable(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in value if name not in RELEASABLE_METRICS]
        if unknown or len(set(value)) != len(value):
            raise ValueError(f"must be distinct names from {sorted(RELEASABLE_METRICS)}; got {list(value)}")
        return value

    @field_validator("max_epsilon", mode="before")
    @classmethod
    def _limit(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in {"none", "unlimited", ""}:
            return None
        return value

    @field_validator("max_epsilon")
    @classmethod
    def _finite_positive(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"must be a finite number > 0 or 'none'; got {value}")
        return value

    @field_validator("signing_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @property
    def evaluate(self) -> bool:
        """Whether the site releases any held-out metric (and so holds out an evaluation split)."""
        return bool(self.release_metrics)

    @property
    def budget(self) -> BudgetSettings:
        """The site's ledger settings."""
        return BudgetSettings(ledger=self.ledger_path, max_epsilon=self.max_epsilon, signing_key=self.signing_key)

    def data_spec(self) -> DataSpec:
        """How to read the site's data file, with the site's OWN label set (never the server's)."""
        return DataSpec(text_column=self.text_column, label_column=self.label_column, labels=self.labels)

    def pair_spec(self) -> PairSpec:
        """How to read the site's prompt/response file (generate runs)."""
        return PairSpec(prompt_column=self.prompt_column, response_column=self.response_column)

    def to_node_config(self) -> dict[str, bool | int | float | str]:
        """Flat node config (for ``flower-supernode --node-config`` or the simulation's site table)."""
        flat: dict[str, bool | int | float | str] = {}
        for key, value in self.model_dump(by_alias=True, mode="json").items():
            if value is None:
                if key == "max-epsilon":
                    flat[key] = "none"
                continue
            if isinstance(value, list):
                if value:  # an empty list is the default: left out
                    flat[key] = ",".join(value)
                continue
            flat[key] = value
        return flat


def parse_site_settings(node_config: Mapping[str, Any], *, source: str = "node config") -> SiteSettings:
    """SiteSettings from a node config (Flower's own simulation keys are ignored)."""
    values = {k: v for k, v in node_config.items() if k not in FLOWER_SIMULATION_KEYS}
    return parse_settings(SiteSettings, values, context=source)
