"""Server optimisers: the round's aggregate applied as a pseudo-gradient (adaptive federated optimisation).

Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar & McMahan, "Adaptive Federated Optimization" (ICLR 2021),
Algorithm 2. With x the current global tensors and a the strategy's aggregate of the round's accepted updates, the
pseudo-gradient is d = a - x (FedAvg moves x to a: one step of 1 along d), and the server applies, per tensor:

* ``sgd``: x + lr d. Computed as a + (lr - 1) d, the same number, so that lr 1 returns the aggregate itself, bit for
  bit: plain FedAvg (or FFA, or product) exactly as without an optimiser.
* ``momentum``: m = mu m + d; x + lr m (server momentum, FedAvgM: Hsu, Qi & Brown 2019).
* ``adam``: m = b1 m + (1 - b1) d; v = b2 v + (1 - b2) d^2; x + lr m / (sqrt(v) + tau).
* ``yogi``: as adam, with v = v - (1 - b2) d^2 sign(v - d^2) (Zaheer et al., NeurIPS 2018): v moves towards d^2 by
  at most (1 - b2) d^2 a round, so a burst of large pseudo-gradients cannot shrink the steps abruptly.

As in Algorithm 2 there is no bias correction; m starts at 0 and v at tau^2 (the paper's v_{-1} >= tau^2). tau is the
paper's "degree of adaptivity" (its epsilon).

Privacy: the aggregate is a function of the sites' DP releases (and of the server's earlier outputs, themselves
such functions); the optimiser is post-processing of DP outputs, so it costs no privacy, whatever its settings.

Invariants: only the tensors given to :meth:`ServerOptimizer.step` are stepped (the strategy gives those its
aggregation can change; FFA's frozen A matrices are never among them); inputs are never modified; each result has its
aggregate tensor's dtype, computed in float64; the state (float64 m and v per tensor, and the step count) depends
only on the sequence of (current, aggregate) pairs, so an optimiser restored from :meth:`ServerOptimizer.state`
continues bit for bit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from common.errors import FederationError
from common.federation.server_settings import ServerOptimizerSettings

#: Tensors by name (the strategy's view of the global adapter, or the round's aggregate in that view).
Tensors = Mapping[str, Tensor]


@dataclass(frozen=True, eq=False)
class OptimizerState:
    """A server optimiser's memory: its name, the steps taken, and its float64 buffers (``m/<tensor>``, ``v/<tensor>``).

    Checkpoints keep ``name`` and ``steps`` in JSON and the buffers in a safetensors file (no pickle).
    """

    name: str
    steps: int = 0
    tensors: Mapping[str, Tensor] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        """Equal names, steps and buffers, bit for bit (dtype and values)."""
        if not isinstance(other, OptimizerState):
            return NotImplemented
        return (
            (self.name, self.steps) == (other.name, other.steps)
            and set(self.tensors) == set(other.tensors)
            and all(
                self.tensors[k].dtype == other.tensors[k].dtype and torch.equal(self.tensors[k], other.tensors[k])
                for k in self.tensors
            )
        )

    __hash__ = None  # type: ignore[assignment]  # mutable tensors inside: not hashable

    def to_json(self) -> dict[str, Any]:
        """The JSON part (the buffers are stored apart)."""
        return {"name": self.name, "steps": self.steps}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], tensors: Mapping[str, Tensor] | None = None) -> OptimizerState:
        """Inverse of :meth:`to_json`, with the buffers read from the checkpoint's tensor file."""
        return cls(name=str(data["name"]), steps=int(data["steps"]), tensors=dict(tensors or {}))


class ServerOptimizer(ABC):
    """Applies each round's pseudo-gradient to the global tensors; subclasses give the rule (module docstring)."""

    name: ClassVar[str]
    #: The buffers a subclass keeps per tensor, and the value each starts at (a function of the settings).
    buffers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: ServerOptimizerSettings) -> None:
        self.settings = settings
        self.steps = 0
        self._buffers: dict[str, Tensor] = {}

    def step(self, current: Tensors, aggregate: Tensors) -> dict[str, Tensor]:
        """The new value of every tensor of ``aggregate``: one step along d = aggregate - current."""
        stepped = {}
        for key, target in aggregate.items():
            x, a = current[key].double(), target.double()
            stepped[key] = self._new_value(key, x, a, a - x).to(target.dtype)
        self.steps += 1
        return stepped

    @abstractmethod
    def _new_value(self, key: str, x: Tensor, a: Tensor, d: Tensor) -> Tensor:
        """The new value of tensor ``key`` (float64) from its current value, the aggregate and d = a - x."""

    def _initial(self, buffer: str) -> float:
        """The value a buffer starts at (0 unless a subclass says otherwise)."""
        return 0.0

    def _buffer(self, buffer: str, key: str, like: Tensor) -> Tensor:
        name = f"{buffer}/{key}"
        if name not in self._buffers:
            self._buffers[name] = torch.full_like(like, self._initial(buffer), dtype=torch.float64)
        return self._buffers[name]

    def state(self) -> OptimizerState:
        """A snapshot (copies of the buffers) for checkpoints."""
        return OptimizerState(self.name, self.steps, {k: v.clone() for k, v in self._buffers.items()})

    def restore(self, state: OptimizerState | None) -> None:
        """Continue from ``state`` (None: start afresh, as a run's first round does)."""
        if state is None:
            self.steps, self._buffers = 0, {}
            return
        if state.name != self.name:
            raise FederationError(
                f"the checkpoint holds {state.name} server-optimiser state; this run uses {self.name}"
            )
        unknown = sorted(k for k in state.tensors if k.split("/", 1)[0] not in self.buffers)
        if unknown:
            raise FederationError(
                f"the checkpoint's {self.name} server-optimiser state has unknown buffers {unknown[:3]}"
            )
        self.steps = state.steps
        self._buffers = {k: v.to(torch.float64, copy=True) for k, v in state.tensors.items()}


class ServerSgd(ServerOptimizer):
    """x + lr d, written a + (lr - 1) d so that lr 1 is the aggregate bit for bit (FedAvg)."""

    name = "sgd"

    def _new_value(self, key: str, x: Tensor, a: Tensor, d: Tensor) -> Tensor:
        return a + (self.settings.learning_rate - 1.0) * d


class ServerMomentum(ServerOptimizer):
    """m = mu m + d; x + lr m."""

    name = "momentum"
    buffers = ("m",)

    def _new_value(self, key: str, x: Tensor, a: Tensor, d: Tensor) -> Tensor:
        m = self.settings.momentum * self._buffer("m", key, d) + d
        self._buffers[f"m/{key}"] = m
        return x + self.settings.learning_rate * m


class FedAdam(ServerOptimizer):
    """Reddi et al.'s FedAdam: m = b1 m + (1 - b1) d; v = b2 v + (1 - b2) d^2; x + lr m / (sqrt(v) + tau)."""

    name = "adam"
    buffers = ("m", "v")

    def _initial(self, buffer: str) -> float:
        return self.settings.tau**2 if buffer == "v" else 0.0

    def _second_moment(self, v: Tensor, squared: Tensor) -> Tensor:
        return self.settings.beta2 * v + (1.0 - self.settings.beta2) * squared

    def _new_value(self, key: str, x: Tensor, a: Tensor, d: Tensor) -> Tensor:
        s = self.settings
        m = s.beta1 * self._buffer("m", key, d) + (1.0 - s.beta1) * d
        v = self._second_moment(self._buffer("v", key, d), d * d)
        self._buffers[f"m/{key}"], self._buffers[f"v/{key}"] = m, v
        return x + s.learning_rate * m / (v.sqrt() + s.tau)


class FedYogi(FedAdam):
    """Reddi et al.'s FedYogi: FedAdam with v = v - (1 - b2) d^2 sign(v - d^2)."""

    name = "yogi"

    def _second_moment(self, v: Tensor, squared: Tensor) -> Tensor:
        return v - (1.0 - self.settings.beta2) * squared * torch.sign(v - squared)


#: ``server-optimizer`` name -> implementation.
SERVER_OPTIMIZERS: dict[str, type[ServerOptimizer]] = {
    cls.name: cls for cls in (ServerSgd, ServerMomentum, FedAdam, FedYogi)
}


def build_server_optimizer(settings: ServerOptimizerSettings) -> ServerOptimizer:
    """The server optimiser ``settings`` name, with its settings."""
    return SERVER_OPTIMIZERS[settings.name](settings)
