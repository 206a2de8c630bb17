"""Accountants against golden values and an independent reference (dp-accounting's PLD accountant)."""

from __future__ import annotations

import itertools
import math
import typing

import pytest

from common.errors import PrivacyParameterError
from common.privacy.accountant import ACCOUNTANTS, AccountantName, PrvAccountant, RdpAccountant, get_accountant
from common.privacy.events import DpSgdEvent, compose_history
from common.privacy.records import ReserveRecord


def ev(sigma: float, q: float, steps: int) -> DpSgdEvent:
    return DpSgdEvent(noise_multiplier=sigma, sample_rate=q, steps=steps, max_grad_norm=1.0)


def pld_epsilon(events: list[DpSgdEvent], delta: float) -> float:
    dp_accounting = pytest.importorskip("dp_accounting")
    from dp_accounting.pld import pld_privacy_accountant

    accountant = pld_privacy_accountant.PLDAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
        value_discretization_interval=1e-4,
    )
    for e in events:
        accountant.compose(
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier)),
                e.steps,
            )
        )
    return accountant.get_epsilon(delta)


def test_golden_values_from_stack_facts():
    events = [ev(1.0, 0.01, 1000)]
    assert RdpAccountant().epsilon(events, delta=1e-5) == pytest.approx(2.10, abs=0.01)
    assert PrvAccountant().epsilon(events, delta=1e-5) == pytest.approx(1.84, abs=0.01)


GRID = list(itertools.product([0.8, 1.0, 2.0], [0.01, 0.05], [20, 500], [1e-5, 1e-3]))


@pytest.mark.parametrize(("sigma", "q", "steps", "delta"), GRID)
def test_prv_matches_pld_and_rdp_is_looser(sigma, q, steps, delta):
    events = [ev(sigma, q, steps)]
    reference = pld_epsilon(events, delta)
    prv = PrvAccountant().epsilon(events, delta=delta)
    assert abs(prv - reference) <= 0.01 * reference, (prv, reference)
    assert prv >= reference * 0.99
    assert RdpAccountant().epsilon(events, delta=delta) >= prv


def test_heterogeneous_composition_matches_pld():
    events = [ev(1.0, 0.02, 100), ev(1.5, 0.05, 60), ev(0.8, 0.01, 200)]
    reference = pld_epsilon(events, 1e-5)
    assert PrvAccountant().epsilon(events, delta=1e-5) == pytest.approx(reference, rel=0.01)


@pytest.mark.parametrize("name", ["prv", "rdp"])
def test_composition_over_rounds_equals_one_event(name):
    accountant = get_accountant(name)
    rounds = [ev(1.1, 0.02, 50)] * 4
    assert accountant.epsilon(rounds, delta=1e-5) == pytest.approx(
        accountant.epsilon([ev(1.1, 0.02, 200)], delta=1e-5), rel=1e-9
    )
    assert compose_history(rounds) == [(1.1, 0.02, 200)]


@pytest.mark.parametrize("name", ["prv", "rdp"])
def test_edge_cases(name):
    accountant = get_accountant(name)
    assert accountant.epsilon([], delta=1e-5) == 0.0
    assert math.isinf(accountant.epsilon([ev(0.0, 0.1, 1)], delta=1e-5))
    with pytest.raises(PrivacyParameterError, match="delta must be in"):
        accountant.epsilon([ev(1.0, 0.1, 1)], delta=1.0)


def test_unknown_accountant():
    with pytest.raises(PrivacyParameterError, match="unknown accountant 'gdp'; choose 'prv' or 'rdp'"):
        get_accountant("gdp")
    with pytest.raises(PrivacyParameterError, match="unknown accountant"):
        get_accountant(["prv"])  # type: ignore[arg-type]


def test_registry_holds_every_accountant_a_ledger_can_record():
    assert set(ACCOUNTANTS) == set(typing.get_args(AccountantName))
    assert set(ACCOUNTANTS) == set(typing.get_args(ReserveRecord.model_fields["accountant"].annotation))
    for name, cls in ACCOUNTANTS.items():
        accountant = get_accountant(name)
        assert type(accountant) is cls and accountant.name == name


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("noise_multiplier", -1.0, "noise multiplier"),
        ("sample_rate", 1.7, r"sample rate must be in \(0, 1\]; got 1.7"),
        ("sample_rate", 0.0, "sample rate"),
        ("steps", 0, "steps must be >= 1"),
        ("max_grad_norm", 0.0, "max grad norm"),
    ],
)
def test_event_validation(field, value, message):
    from pydantic import ValidationError

    values = {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 1, "max_grad_norm": 1.0, field: value}
    with pytest.raises(ValidationError, match=message):
        DpSgdEvent(**values)


def test_event_fields_are_keyword_only():
    with pytest.raises(TypeError):
        DpSgdEvent(1.0, 0.1, 1, 1.0)  # type: ignore[misc]
