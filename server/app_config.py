"""pyproject's ``[tool.flwr.app.config]``: the flat form of :class:`FederationConfig`'s defaults, generated.

Flower accepts run-config overrides only for keys the app declares, so every setting must appear in pyproject.toml.
Its values are not written by hand: ``python -m server.app_config`` (``make app-config``) rewrites the table from the
model, and ``tests/server/test_app_config.py`` fails when the two differ. The defaults live in one place.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tomli_w

from common.federation.config import FederationConfig

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
TABLE = "[tool.flwr.app.config]"
GENERATED_NOTE = "# Generated from FederationConfig (common/federation/config.py) by `make app-config`; do not edit.\n"


def render() -> str:
    """The table as it must stand in pyproject.toml (the last table of the file)."""
    return f"{TABLE}\n{GENERATED_NOTE}{tomli_w.dumps(FederationConfig().to_run_config())}"


def current(text: str) -> str:
    """The table as it stands in ``text``."""
    return text[text.index(TABLE) :]


def main() -> int:
    """Rewrite the table in pyproject.toml; exit 0."""
    text = PYPROJECT.read_text()
    PYPROJECT.write_text(text[: text.index(TABLE)] + render())
    print(f"{PYPROJECT}: {TABLE} regenerated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
