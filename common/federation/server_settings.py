"""What the server does with the sites' aggregate: its optimiser, and which round's adapter it keeps.

* :class:`ServerOptimizerSettings`: adaptive federated optimisation (Reddi et al., ICLR 2021, "Adaptive Federated
  Optimization"): the aggregate of the accepted updates minus the current global adapter is a pseudo-gradient,
  applied by SGD (server-lr 1 is plain FedAvg), SGD with momentum, Adam or Yogi. It post-processes DP outputs, so
  it costs no privacy.
* :class:`SelectionSettings`: the round whose adapter is kept, by a metric on the SERVER's held-out data (no site's
  privacy is spent), and early stopping after ``patience`` rounds without improvement (0: never stop early).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from common.training.selection import SelectionSettings

__all__ = ["SelectionSettings", "ServerOptimizerName", "ServerOptimizerSettings"]

ServerOptimizerName = Literal["sgd", "momentum", "adam", "yogi"]


class ServerOptimizerSettings(BaseModel):
    """How the server applies the round's pseudo-gradient (Reddi et al. 2021's FedOpt family)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ServerOptimizerName = "sgd"
    lr: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    momentum: float = Field(default=0.9, ge=0, lt=1, allow_inf_nan=False)
    beta1: float = Field(default=0.9, ge=0, lt=1, allow_inf_nan=False)
    beta2: float = Field(default=0.99, ge=0, lt=1, allow_inf_nan=False)
    tau: float = Field(default=1e-3, gt=0, allow_inf_nan=False)  # adaptivity: Reddi et al.'s epsilon
