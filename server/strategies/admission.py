"""The rules that need the run's memory: witnessed ledger heads, a constant ``num-examples``, the weight share.

:mod:`server.inspection` judges one reply on its own; these rules judge it against what the server saw before
(:class:`~server.strategies.state.StrategyState`) and against the round's other updates:

1. **Exclusion.** A site excluded earlier (it refused, its ledger was rolled back, its N changed, it claimed too
   large a share) is rejected if it replies at all (it is never sampled; a resumed simulation may not yet know it).
2. **Witness** (:mod:`server.witness`): a trained reply's ledger head must extend the head witnessed last (trust on
   first use); a rolled-back or forked ledger is rejected and the site excluded. An accepted head is witnessed.
3. **Constant N**: ``num-examples`` is the size of the site's dataset, which cannot change within a run; a site that
   reports another N than before is rejected and excluded (it would be rejected every round, spending budget for
   nothing).
4. **Robust weighting** (:func:`over_share`): with ``examples`` weighting, an update whose share of the round's total
   weight is above ``max_site_weight`` is rejected and its site excluded (its N cannot change, so it would be
   again). One site claiming 10**12 examples would otherwise BE the aggregate. With ``uniform`` weighting every
   update weighs 1, the share is 1/K, and no site can claim more.

The cap bounds ONE site; k colluding sites can hold k times it, which is why enrolment (one key, one name) matters.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace

from common.errors import LedgerTamperError
from common.federation.rounds import Status
from server.identities import SiteIdentity
from server.inspection import InspectedReply
from server.strategies.state import StrategyState
from server.witness import check_extends

log = logging.getLogger(__name__)

#: Relative slack on the share rule, so that K equal updates meet a cap of exactly 1/K despite rounding.
SHARE_SLACK = 1e-9


def admit(state: StrategyState, inspected: InspectedReply, site: SiteIdentity) -> InspectedReply:
    """Apply rules 1-3 to one inspected reply, updating ``state`` (exclusions, witnesses, N)."""
    result = inspected.result
    name = site.name
    if name in state.excluded:
        reason = f"{site.label}: excluded earlier in this run ({state.excluded[name]})"
        log.warning("rejected: %s", reason)
        return InspectedReply(replace(result, status=Status.REJECTED, reason=reason))
    if result.status is Status.REFUSED:
        state.excluded[name] = f"refused: {result.reason}"
        return inspected
    if inspected.claim is not None:
        try:
            check_extends(state.witnesses.get(name), inspected.claim, trained=True)
        except LedgerTamperError as exc:
            return _exclude(state, site, inspected, f"ledger rolled back or forked: {exc}")
        state.witnesses[name] = inspected.claim.head
        result = replace(result, ledger_head=inspected.claim.head)
    if result.status is Status.TRAINED:
        known = state.examples.setdefault(name, inspected.num_examples)
        if known != inspected.num_examples:
            reason = (
                f"num-examples changed from {known} to {inspected.num_examples} (a dataset's size is constant "
                "within a run)"
            )
            return _exclude(state, site, InspectedReply(result), reason)
    return replace(inspected, result=result)


def reject_for_share(
    state: StrategyState, inspected: InspectedReply, site: SiteIdentity, share: float, cap: float
) -> InspectedReply:
    """Rule 4's verdict on one update: rejected, its site excluded, the reason naming the share and the option."""
    reason = (
        f"its num-examples ({inspected.num_examples}) is {share:.1%} of the round's total weight, above "
        f"--max-site-weight {cap:g}"
    )
    return _exclude(state, site, inspected, reason)


def over_share(weights: Mapping[str, float], cap: float) -> dict[str, float]:
    """The updates to reject under rule 4: name -> its share when rejected.

    Repeatedly rejects the largest share while it is above ``cap``, then recomputes the shares of the rest, so that
    no update kept has more than ``cap`` of the weight of the updates kept. It stops when fewer than 1/cap updates
    remain: then even equal weights cannot meet the cap, which is no site's fault (the round has too few updates).
    """
    remaining = dict(weights)
    rejected: dict[str, float] = {}
    while remaining and len(remaining) * cap >= 1 - SHARE_SLACK:
        total = sum(remaining.values())
        name, weight = max(remaining.items(), key=lambda item: item[1])
        share = weight / total
        if share <= cap * (1 + SHARE_SLACK):
            break
        rejected[name] = share
        del remaining[name]
    return rejected


def largest_share(weights: Mapping[str, float]) -> float:
    """The largest share of the total weight (0 for no updates)."""
    total = sum(weights.values())
    return max(weights.values()) / total if weights and total > 0 else 0.0


def _exclude(state: StrategyState, site: SiteIdentity, inspected: InspectedReply, why: str) -> InspectedReply:
    state.excluded[site.name] = why
    reason = f"{site.label}: {why}; excluded for the rest of the run"
    log.warning("rejected update: %s", reason)
    return InspectedReply(replace(inspected.result, status=Status.REJECTED, reason=reason), claim=inspected.claim)
