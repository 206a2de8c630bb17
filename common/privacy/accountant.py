"""Accountants: epsilon of a sequence of DP-SGD events at a given delta.

One interface, several implementations registered by name in :data:`ACCOUNTANTS`, all wrapping Opacus's analyses
rather than re-deriving them:

* ``prv`` (default): numerical composition of privacy loss random variables (Gopi, Lee & Wutschitz, NeurIPS 2021,
  "Numerical Composition of Differential Privacy"); returns the upper end of its error bound, so it never
  under-reports. Tight: within ~1% of dp-accounting's PLD accountant.
* ``rdp``: Renyi DP of the subsampled Gaussian (Mironov, Talwar & Zhang 2019), converted to (epsilon, delta);
  looser (typically 8-24% above PRV) but cheap and widely cited.

Accountants are stateless: ``epsilon(events, delta=...)`` is a pure function of the events, which is what lets the
ledger recompute spend from its records instead of trusting a stored running total.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal

from common.errors import PrivacyParameterError
from common.privacy.events import DpSgdEvent, compose_history

AccountantName = Literal["prv", "rdp"]


def check_delta(delta: float) -> float:
    """Return ``delta`` if it lies in (0, 1), else raise PrivacyParameterError naming it."""
    if not (isinstance(delta, int | float) and 0.0 < delta < 1.0):
        raise PrivacyParameterError(f"delta must be in (0, 1); got {delta}")
    return float(delta)


class Accountant(ABC):
    """Computes epsilon for a composition of DP-SGD events."""

    name: AccountantName

    def epsilon(self, events: Sequence[DpSgdEvent], *, delta: float) -> float:
        """Epsilon of running all ``events`` (in any order) on one dataset, at ``delta``.

        No events cost nothing (0.0); any event with zero noise costs infinity.
        """
        check_delta(delta)
        if not events:
            return 0.0
        if any(e.noise_multiplier == 0 for e in events):
            return math.inf
        history = compose_history(events)
        key = (self.name, self._settings(), tuple(history), delta)
        if key not in _CACHE:
            if len(_CACHE) >= _CACHE_SIZE:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = self._epsilon(history, delta)
        return _CACHE[key]

    def _settings(self) -> tuple[float, ...]:
        """Parameters that change the result (part of the memo key)."""
        return ()

    @abstractmethod
    def _epsilon(self, history: list[tuple[float, float, int]], delta: float) -> float: ...


# Memo of (accountant, settings, composed history, delta) -> epsilon. Epsilon is a pure function of the events, so
# remembering it is safe; it saves repeated PRV computations (e.g. a site's spend before a round equals its spend
# after the previous one). Bounded, first-in first-out.
_CACHE: dict[tuple[object, ...], float] = {}
_CACHE_SIZE = 512


class PrvAccountant(Accountant):
    """PRV accountant (tight, default).

    Opacus's PRV accountant returns ``estimate + ~eps_error`` (an upper bound). A fixed absolute error would make small
    epsilons loose in relative terms (0.01 on 0.1 is 10%), so the error is relative: a coarse pass at
    ``max_eps_error`` is refined to ``rel_error * epsilon`` (but not below ``min_eps_error``) when that is tighter.
    The result stays an upper bound and lies within ~``rel_error`` of the exact value.
    """

    name: AccountantName = "prv"

    def __init__(self, *, rel_error: float = 0.004, max_eps_error: float = 0.01, min_eps_error: float = 1e-4) -> None:
        self.rel_error = rel_error
        self.max_eps_error = max_eps_error
        self.min_eps_error = min_eps_error

    def _settings(self) -> tuple[float, ...]:
        return (self.rel_error, self.max_eps_error, self.min_eps_error)

    def _epsilon(self, history: list[tuple[float, float, int]], delta: float) -> float:
        from opacus.accountants import PRVAccountant

        accountant = PRVAccountant()
        accountant.history = history
        with warnings.catch_warnings():
            # PRV sizes its discretisation domain with an internal RDP bound, which warns when its best order is
            # the largest one tried; that only affects the domain size, never the epsilon's validity.
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            # With q = 1 (every example in every batch: no subsampling) the PRV's log(1 - q) is -inf, which numpy
            # reports; the comparison it feeds is still exact (every t exceeds -inf).
            warnings.filterwarnings("ignore", message="divide by zero encountered in log", category=RuntimeWarning)
            coarse = float(accountant.get_epsilon(delta=delta, eps_error=self.max_eps_error))
            wanted = max(self.rel_error * coarse, self.min_eps_error)
            if wanted >= self.max_eps_error:
                return coarse
            return min(coarse, float(accountant.get_epsilon(delta=delta, eps_error=wanted)))


class RdpAccountant(Accountant):
    """RDP accountant (looser, fast)."""

    name: AccountantName = "rdp"

    def _epsilon(self, history: list[tuple[float, float, int]], delta: float) -> float:
        from opacus.accountants import RDPAccountant

        accountant = RDPAccountant()
        accountant.history = history
        return float(accountant.get_epsilon(delta=delta))


#: Name -> accountant class (the registry pattern of opacus/accountants/registry.py). A ledger records the name of
#: the accountant each dataset is accounted with, so a name's meaning must never change once used.
ACCOUNTANTS: dict[str, type[Accountant]] = {cls.name: cls for cls in (PrvAccountant, RdpAccountant)}


def get_accountant(name: AccountantName | str) -> Accountant:
    """A new accountant of the kind registered as ``name`` (see :data:`ACCOUNTANTS`)."""
    cls = ACCOUNTANTS.get(name) if isinstance(name, str) else None
    if cls is None:
        choices = " or ".join(repr(known) for known in ACCOUNTANTS)
        raise PrivacyParameterError(f"unknown accountant {name!r}; choose {choices}")
    return cls()
