"""Parse raw settings (CLI options, Flower run/node config) into frozen pydantic models, once, at the edge.

A pydantic ``ValidationError`` lists every problem with internal locations; users get one
:class:`~common.errors.ConfigError` line naming the setting, the value found and the rule instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from common.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_settings(
    model: type[ModelT],
    values: Mapping[str, Any],
    *,
    context: str = "setting",
    names: Mapping[str, str] | None = None,
) -> ModelT:
    """``model.model_validate(values)``, with validation failures turned into one ConfigError.

    ``names`` maps field names to what the user typed (e.g. ``{"target_epsilon": "--epsilon"}``).
    """
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, context=context, names=names)) from None


def describe_validation_error(exc: ValidationError, *, context: str, names: Mapping[str, str] | None = None) -> str:
    """One line per problem: ``<context> 'a.b': <rule> (got <value>)``, joined with '; '."""
    parts = []
    names = names or {}
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"])
        location = names.get(location, location)
        message = error["msg"].removeprefix("Value error, ")
        found = error.get("input")
        where = f"{context} {location!r}: " if location else f"{context}: "
        shown = "" if isinstance(found, dict | list) else f" (got {found!r})"
        parts.append(f"{where}{message}{shown}")
    return "; ".join(parts)
