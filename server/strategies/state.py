"""What a strategy carries from round to round, per authenticated site identity, and its JSON form for checkpoints.

Everything the server remembers about a site is keyed by its identity's name (:mod:`server.identities`), not by a
node id: a simulated node gets a new id when a run resumes, and a name is what reports and audits show.

Schema evolution: ``strategy_version`` 2 added ``witnesses`` and ``examples`` and keyed ``excluded`` by identity;
a version-1 state (no ``strategy_version``) keyed ``excluded`` by node id, read here as ``node <id>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.federation.rounds import head_from_json, head_to_json
from common.privacy.chain import LedgerHead

STATE_VERSION = 2


@dataclass
class StrategyState:
    """The sampling RNG, and per site: why it is never sampled again, its last witnessed ledger head, its N.

    Invariants: a site in ``excluded`` is never sampled again in the run; ``witnesses`` holds the last head the
    server accepted from each site (each one extends the previous); ``examples`` holds the ``num-examples`` each site
    reported first in the run, which it must keep reporting.
    """

    rng_state: tuple[Any, ...]
    excluded: dict[str, str] = field(default_factory=dict)
    witnesses: dict[str, LedgerHead] = field(default_factory=dict)
    examples: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (the RNG state as Python's ``random`` gives it, tuples as lists)."""
        version, internal, gauss = self.rng_state
        return {
            "strategy_version": STATE_VERSION,
            "rng_state": [version, list(internal), gauss],
            "excluded": dict(self.excluded),
            "witnesses": {name: head_to_json(head) for name, head in self.witnesses.items()},
            "examples": dict(self.examples),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StrategyState:
        """Inverse of :meth:`to_json`; also reads version-1 states."""
        version, internal, gauss = data["rng_state"]
        excluded = {str(k): str(v) for k, v in data.get("excluded", {}).items()}
        if "strategy_version" not in data:
            excluded = {f"node {k}": v for k, v in excluded.items()}
        return cls(
            rng_state=(version, tuple(internal), gauss),
            excluded=excluded,
            witnesses={str(k): head_from_json(v) for k, v in data.get("witnesses", {}).items()},
            examples={str(k): int(v) for k, v in data.get("examples", {}).items()},
        )
