"""What a strategy carries from round to round, per authenticated site identity, and its JSON form for checkpoints.

Everything the server remembers about a site is keyed by its identity's name (:mod:`server.identities`), not by a
node id: a simulated node gets a new id when a run resumes, and a name is what reports and audits show.

Schema evolution: ``strategy_version`` 2 added ``witnesses`` and ``examples`` and keyed ``excluded`` by identity;
a version-1 state (no ``strategy_version``) keyed ``excluded`` by node id, read here as ``node <id>``. Version 3 added
``optimizer`` (the server optimiser's name and step count; its buffers are tensors, which the checkpoint stores in a
safetensors file and passes back to :meth:`StrategyState.from_json`); an older state has none: a fresh optimiser.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from common.federation.rounds import head_from_json, head_to_json
from common.privacy.chain import LedgerHead
from server.optimizers import OptimizerState

if TYPE_CHECKING:
    from torch import Tensor

STATE_VERSION = 3


@dataclass
class StrategyState:
    """The sampling RNG, and per site: why it is never sampled again, its last witnessed ledger head, its N.

    ``optimizer`` is the server optimiser's memory (None: no optimiser, or none stepped yet in a checkpoint's run).
    Invariants: a site in ``excluded`` is never sampled again in the run; ``witnesses`` holds the last head the
    server accepted from each site (each one extends the previous); ``examples`` holds the ``num-examples`` each site
    reported first in the run, which it must keep reporting.
    """

    rng_state: tuple[Any, ...]
    excluded: dict[str, str] = field(default_factory=dict)
    witnesses: dict[str, LedgerHead] = field(default_factory=dict)
    examples: dict[str, int] = field(default_factory=dict)
    optimizer: OptimizerState | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (the RNG state as Python's ``random`` gives it, tuples as lists; no optimiser buffers)."""
        version, internal, gauss = self.rng_state
        return {
            "strategy_version": STATE_VERSION,
            "rng_state": [version, list(internal), gauss],
            "excluded": dict(self.excluded),
            "witnesses": {name: head_to_json(head) for name, head in self.witnesses.items()},
            "examples": dict(self.examples),
            "optimizer": self.optimizer.to_json() if self.optimizer is not None else None,
        }

    @classmethod
    def from_json(
        cls, data: Mapping[str, Any], *, optimizer_tensors: Mapping[str, Tensor] | None = None
    ) -> StrategyState:
        """Inverse of :meth:`to_json` given the optimiser's buffers; also reads version-1 and -2 states."""
        version, internal, gauss = data["rng_state"]
        optimizer = data.get("optimizer")
        excluded = {str(k): str(v) for k, v in data.get("excluded", {}).items()}
        if "strategy_version" not in data:
            excluded = {f"node {k}": v for k, v in excluded.items()}
        return cls(
            rng_state=(version, tuple(internal), gauss),
            excluded=excluded,
            witnesses={str(k): head_from_json(v) for k, v in data.get("witnesses", {}).items()},
            examples={str(k): int(v) for k, v in data.get("examples", {}).items()},
            optimizer=OptimizerState.from_json(optimizer, optimizer_tensors) if optimizer else None,
        )
