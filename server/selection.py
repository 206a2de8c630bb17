"""Which round's adapter is the run's result, and when to stop early, by a metric on the SERVER's held-out data.

After each aggregated round the server evaluates the new global adapter on its own held-out file (``eval-data``).
That data is the server's, so choosing on it spends no site's privacy, and the adapters chosen among are already DP
releases (choosing is post-processing). The sites' federated evaluation is never used: it is not DP, and choosing by
it would be an adaptive query on their data.

* The kept round has the best ``select-metric`` (accuracy, macro_f1: highest; loss: lowest) among the aggregated
  rounds 1, 2, ... (round 0, the untrained initial adapter, is no candidate). An improvement must be strict, so a
  tie keeps the earlier round; a missing or non-finite value never improves.
* With ``patience`` P > 0 the run stops once P evaluated rounds in a row have not improved on the best.
* Without server-side held-out data there is nothing to select on: the last round's adapter is kept, and a patience
  is refused before any round runs (:func:`check_selection`).

Invariants: the kept adapter IS the best round's global adapter (the same tensors; checkpointed with the round, so a
resumed run keeps the very same one); :class:`SelectionState` is everything a resumed run needs to select and stop
exactly as an uninterrupted one.
"""

from __future__ import annotations

from torch import Tensor

from common.errors import ConfigError
from common.federation.config import FederationConfig
from common.federation.rounds import Selection
from common.training.selection import HIGHER_IS_BETTER, RoundSelector, SelectionState

__all__ = ["RoundSelector", "SelectionState", "check_selection", "kept_round"]


def check_selection(config: FederationConfig) -> None:
    """Refuse settings the round loop cannot honour, before any model is loaded or round runs.

    Early stopping needs server-side held-out data (there would be nothing to measure improvement on), and the
    selection metric must be one the run's task computes.
    """
    problem = config.task_problem(config.model_task())
    if problem is not None:
        raise ConfigError(problem)
    patience = config.selection.patience
    if patience > 0 and not config.eval_data:
        raise ConfigError(
            f"patience {patience} needs server-side held-out data to measure improvement on: give eval-data "
            "(--eval-data FILE) or set patience 0"
        )


def kept_round(
    selector: RoundSelector, completed_rounds: int, last_adapter: dict[str, Tensor], *, evaluated: bool
) -> tuple[Selection, dict[str, Tensor]]:
    """The round whose adapter is the run's result, why, and that adapter.

    ``evaluated``: whether the run has server-side held-out data.
    """
    state = selector.state
    if state.best_round is not None and state.best_adapter is not None and state.best_value is not None:
        direction = "highest" if HIGHER_IS_BETTER[selector.metric] else "lowest"
        reason = f"{direction} {selector.metric} on the server's held-out data ({state.best_value:.4g})"
        return Selection(state.best_round, selector.metric, state.best_value, reason), state.best_adapter
    if completed_rounds == 0:
        reason = "the initial adapter (no round aggregated)"
    elif not evaluated:
        reason = "the last round's (no server-side held-out data to select on)"
    else:
        reason = f"the last round's (no round had a finite {selector.metric} on the server's held-out data)"
    return Selection(completed_rounds, None, None, reason), last_adapter
