"""Choose the smallest noise multiplier that keeps a whole plan within an epsilon limit.

A plan is ``rounds`` future rounds of ``steps`` DP-SGD steps at sample rate ``q``, composed with everything already
spent on the dataset (``prior`` events). Epsilon decreases monotonically in sigma, so a bisection on sigma against
the accountant finds the smallest sigma whose composed epsilon is at most the target (and within ``rel_tolerance``
of it). The accountant's own error bound is on the safe side (PRV returns its upper estimate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from common.errors import PrivacyParameterError
from common.privacy.accountant import Accountant, PrvAccountant, check_delta
from common.privacy.events import DpSgdEvent

MAX_NOISE_MULTIPLIER = 1e4


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    rounds: int = 1,
    max_grad_norm: float = 1.0,
    prior: Sequence[DpSgdEvent] = (),
    accountant: Accountant | None = None,
    rel_tolerance: float = 0.005,
) -> float:
    """Smallest sigma such that ``prior`` plus ``rounds`` x (sigma, q, steps) stays within ``target_epsilon``.

    Raises PrivacyParameterError when no sigma can fit (the prior spend alone reaches the target) or when the
    parameters are out of their domains.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise PrivacyParameterError(f"target epsilon must be a finite number > 0; got {target_epsilon}")
    if rounds < 1:
        raise PrivacyParameterError(f"planned rounds must be >= 1; got {rounds}")
    check_delta(delta)
    accountant = accountant or PrvAccountant()
    prior = list(prior)

    def epsilon_at(sigma: float) -> float:
        planned = DpSgdEvent(
            noise_multiplier=sigma, sample_rate=sample_rate, steps=steps * rounds, max_grad_norm=max_grad_norm
        )
        return accountant.epsilon([*prior, planned], delta=delta)

    spent = accountant.epsilon(prior, delta=delta)
    if spent >= target_epsilon:
        raise PrivacyParameterError(
            f"no noise level fits: epsilon already spent ({spent:.4g}) reaches the target ({target_epsilon:.4g})"
        )
    low, high = 0.0, 1.0
    eps_high = epsilon_at(high)
    while eps_high > target_epsilon:
        low, high = high, high * 2
        if high > MAX_NOISE_MULTIPLIER:
            raise PrivacyParameterError(
                f"no noise multiplier up to {MAX_NOISE_MULTIPLIER:g} fits epsilon {target_epsilon:.4g} at delta "
                f"{delta:g} for {rounds} x {steps} steps at sample rate {sample_rate:g} (already spent "
                f"{spent:.4g}); raise the target or plan fewer steps"
            )
        eps_high = epsilon_at(high)
    # Invariant: epsilon_at(high) <= target < epsilon_at(low) (epsilon_at(0) is infinite).
    while eps_high < target_epsilon * (1 - rel_tolerance) and high - low > 1e-6 * high:
        mid = (low + high) / 2
        eps_mid = epsilon_at(mid)
        if eps_mid <= target_epsilon:
            high, eps_high = mid, eps_mid
        else:
            low = mid
    return high


def calibrate_run(
    *,
    limit: float | None,
    run_epsilon: float | None,
    prior: Sequence[DpSgdEvent],
    delta: float,
    sample_rate: float,
    steps: int,
    rounds: int,
    max_grad_norm: float,
    accountant: Accountant,
) -> float:
    """Smallest sigma for a run's plan (``rounds`` x ``steps`` steps at ``sample_rate``) that meets every budget given.

    The plan must keep ``prior`` plus the run within the lifetime ``limit``, and the run alone (no prior) within
    ``run_epsilon``. Epsilon falls as sigma grows, so the sigma meeting both is the larger of the two calibrations.
    Raises PrivacyParameterError if neither budget is given or if no sigma fits one of them.
    """
    if limit is None and run_epsilon is None:
        raise PrivacyParameterError("calibrating noise needs an epsilon: a lifetime limit or a per-run target")

    def fit(target: float, spent_before: Sequence[DpSgdEvent]) -> float:
        return calibrate_noise_multiplier(
            target_epsilon=target,
            delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            rounds=rounds,
            max_grad_norm=max_grad_norm,
            prior=spent_before,
            accountant=accountant,
        )

    sigmas = [] if run_epsilon is None else [fit(run_epsilon, ())]
    if limit is not None:
        sigmas.append(fit(limit, prior))
    return max(sigmas)
