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


#: The server learning rate when none is given: 1 for sgd (plain averaging) and momentum (FedAvgM, Hsu et al.
#: 2019); 0.01 for the adaptive ones, whose step is about lr per coordinate whatever the pseudo-gradient's scale
#: (Reddi et al. 2021 tuned it over 10^-3..10^0; 10^-2 is the middle of their best values). Not measured here.
DEFAULT_SERVER_LR: dict[str, float] = {"sgd": 1.0, "momentum": 1.0, "adam": 0.01, "yogi": 0.01}


class ServerOptimizerSettings(BaseModel):
    """How the server applies the round's pseudo-gradient (Reddi et al. 2021's FedOpt family)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ServerOptimizerName = "sgd"
    lr: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # None: DEFAULT_SERVER_LR[name]
    momentum: float = Field(default=0.9, ge=0, lt=1, allow_inf_nan=False)
    beta1: float = Field(default=0.9, ge=0, lt=1, allow_inf_nan=False)
    beta2: float = Field(default=0.99, ge=0, lt=1, allow_inf_nan=False)
    tau: float = Field(default=1e-3, gt=0, allow_inf_nan=False)  # adaptivity: Reddi et al.'s epsilon

    @property
    def learning_rate(self) -> float:
        """The server learning rate: the one given, else the optimiser's default."""
        return self.lr if self.lr is not None else DEFAULT_SERVER_LR[self.name]
