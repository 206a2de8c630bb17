from __future__ import annotations

import pytest

from common.errors import PrivacyParameterError
from common.privacy.accountant import PrvAccountant, RdpAccountant
from common.privacy.calibration import calibrate_noise_multiplier
from common.privacy.events import DpSgdEvent


@pytest.mark.parametrize(
    ("target", "q", "steps", "rounds"),
    [(8.0, 0.033, 90, 1), (1.0, 0.01, 500, 1), (3.0, 0.05, 40, 5), (0.5, 0.02, 100, 1)],
)
def test_calibrated_epsilon_is_at_most_target_and_within_2_percent(target, q, steps, rounds):
    accountant = PrvAccountant()
    sigma = calibrate_noise_multiplier(
        target_epsilon=target, delta=1e-5, sample_rate=q, steps=steps, rounds=rounds, accountant=accountant
    )
    event = DpSgdEvent(noise_multiplier=sigma, sample_rate=q, steps=steps, max_grad_norm=1.0)
    spent = accountant.epsilon([event] * rounds, delta=1e-5)
    assert spent <= target
    assert spent >= 0.98 * target


def test_calibration_accounts_for_prior_spend():
    prior = [DpSgdEvent(noise_multiplier=1.0, sample_rate=0.02, steps=200, max_grad_norm=1.0)]
    accountant = RdpAccountant()
    fresh = calibrate_noise_multiplier(
        target_epsilon=4.0, delta=1e-5, sample_rate=0.02, steps=200, accountant=accountant
    )
    after = calibrate_noise_multiplier(
        target_epsilon=4.0, delta=1e-5, sample_rate=0.02, steps=200, prior=prior, accountant=accountant
    )
    assert after > fresh
    planned = DpSgdEvent(noise_multiplier=after, sample_rate=0.02, steps=200, max_grad_norm=1.0)
    assert accountant.epsilon([*prior, planned], delta=1e-5) <= 4.0


def test_no_sigma_fits_when_prior_exhausts_target():
    prior = [DpSgdEvent(noise_multiplier=0.5, sample_rate=0.1, steps=500, max_grad_norm=1.0)]
    with pytest.raises(PrivacyParameterError, match="already spent"):
        calibrate_noise_multiplier(target_epsilon=1.0, delta=1e-5, sample_rate=0.1, steps=10, prior=prior)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_epsilon": 0.0}, "target epsilon"),
        ({"target_epsilon": float("inf")}, "target epsilon"),
        ({"delta": 0.0}, "delta must be in"),
        ({"rounds": 0}, "planned rounds"),
    ],
)
def test_bad_parameters(kwargs, message):
    values = {"target_epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.01, "steps": 10, **kwargs}
    with pytest.raises(PrivacyParameterError, match=message):
        calibrate_noise_multiplier(**values)
